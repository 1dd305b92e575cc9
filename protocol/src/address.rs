//! Member addresses as written in configs and stored in the cluster state: `host:port`,
//! where the host is an IP address or a DNS name (a Kubernetes StatefulSet's pod names, say).
//! Names are resolved when a connection is opened ([`crate::quic::resolve`]), never once at
//! start, so a member that comes back at a new IP address is found again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `host:port` split in two: the host without IPv6 brackets, and the port. `None` when the
/// text is not of that form (no port, a port that is not a number, an empty host, spaces).
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let valid_name = host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    (!host.is_empty() && valid_name).then_some((host, port))
}

/// Checks that `addr` is `host:port` with a port other than 0; the error says what is wrong.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    match split_host_port(addr) {
        None => Err(format!("'{addr}' is not host:port (an IP address or DNS name, then a port)")),
        Some((_, 0)) => Err(format!("'{addr}' has port 0; give the port others connect to")),
        Some(_) => Ok(()),
    }
}

/// The address to bind for a member others reach at `advertised`: that address itself when
/// its host is an IP address, else every interface (of the family a name usually resolves
/// to: IPv4) on its port.
pub fn listen_for(advertised: &str) -> Option<SocketAddr> {
    if let Ok(a) = advertised.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = split_host_port(advertised)?;
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if host.contains(':') => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("127.0.0.1:7100"), Some(("127.0.0.1", 7100)));
        assert_eq!(split_host_port("[::1]:7100"), Some(("::1", 7100)));
        assert_eq!(
            split_host_port("shoal-coordinator-0.shoal-coordinator.shoal.svc:7100"),
            Some(("shoal-coordinator-0.shoal-coordinator.shoal.svc", 7100))
        );
        for bad in ["", "host", "host:", ":7100", "host:70000", "host:x", "::1:7100", "a b:1", "[::1:7100"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
        assert!(check_host_port("c-0.c:0").expect_err("port 0").contains("port 0"));
        assert!(check_host_port("c-0.c").expect_err("no port").contains("not host:port"));
        assert_eq!(check_host_port("c-0.c:7100"), Ok(()));
    }

    #[test]
    fn names_listen_on_every_interface_and_addresses_on_themselves() {
        assert_eq!(listen_for("127.0.0.2:7100"), Some("127.0.0.2:7100".parse().expect("addr")));
        assert_eq!(listen_for("[::1]:7100"), Some("[::1]:7100".parse().expect("addr")));
        assert_eq!(listen_for("shoal-0.shoal:7100"), Some("0.0.0.0:7100".parse().expect("addr")));
        assert_eq!(listen_for("nonsense"), None);
    }
}
