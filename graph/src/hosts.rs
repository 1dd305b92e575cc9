//! Which hosts `http` and `mcp` steps may call: only those the graph lists in `allow_hosts`.

use std::net::IpAddr;

/// Whether `ip` is loopback, link-local, unspecified or a cloud metadata address: these
/// are reached only when the graph lists the address itself.
pub fn is_sensitive(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| is_sensitive(IpAddr::V4(v4)))
        }
    }
}

/// The host and port of an `http://` or `https://` URL.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        other => return Err(format!("scheme {other:?} is not allowed (http or https)")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("URLs with user info are not allowed".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Whether `host:port` is on the allow-list (entries are `host` or `host:port`).
pub fn allowed(host: &str, port: u16, allow: &[String]) -> bool {
    allow.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        let a = a.trim_start_matches('[').replace(']', "");
        a == host || a == format!("{host}:{port}")
    })
}

/// Checks a URL against the allow-list (the run-time check also checks the addresses the
/// name resolves to with [`is_sensitive`]).
pub fn check_url(url: &str, allow: &[String]) -> Result<(), String> {
    let (host, port) = host_port(url)?;
    if !allowed(&host, port, allow) {
        return Err(format!(
            "host {host}:{port} is not in the graph's allow_hosts{}",
            if allow.is_empty() { " (which is empty)".to_string() } else { format!(" ({})", allow.join(", ")) }
        ));
    }
    Ok(())
}

/// The `scheme://host:port/` of a URL, without its user info, path and query (which may
/// hold secrets): what an MCP server's URL is checked and named by.
pub fn origin(url: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme (http:// or https://)")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Ok(format!("{}://{host}/", scheme.to_ascii_lowercase()))
}

/// Checks an MCP server's URL against the allow-list: its host and port, whatever user
/// info or query it carries (errors never quote those).
pub fn check_mcp_url(url: &str, allow: &[String]) -> Result<(), String> {
    check_url(&origin(url)?, allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_pass() {
        let allow = vec!["127.0.0.1:8080".to_string(), "api.example.com".to_string()];
        assert!(check_url("http://127.0.0.1:8080/tool?x=1", &allow).is_ok());
        assert!(check_url("http://127.0.0.1:9090/", &allow)
            .expect_err("an error")
            .contains("not in the graph's allow_hosts"));
        assert!(check_url("https://API.example.com/v1", &allow).is_ok());
        assert!(check_url("http://169.254.169.254/latest/meta-data", &allow).is_err());
        assert!(check_url("file:///etc/passwd", &allow).expect_err("an error").contains("scheme"));
        assert!(check_url("http://user@api.example.com/", &allow).is_err());
    }

    #[test]
    fn mcp_urls_are_checked_by_host_without_their_secrets() {
        let allow = vec!["127.0.0.1:9000".to_string()];
        assert_eq!(origin("HTTP://u:p@127.0.0.1:9000/mcp?token=t").expect("ok"), "http://127.0.0.1:9000/");
        assert!(check_mcp_url("http://u:p@127.0.0.1:9000/mcp?token=t", &allow).is_ok());
        let e = check_mcp_url("http://u:secret@10.0.0.1:9000/mcp?token=tok", &allow).expect_err("refused");
        assert!(e.contains("10.0.0.1:9000") && !e.contains("secret") && !e.contains("tok"), "{e}");
        assert!(check_mcp_url("ftp://h/x?token=tok", &allow).expect_err("refused").contains("scheme"));
    }

    #[test]
    fn loopback_link_local_and_metadata_are_sensitive() {
        for ip in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "fd00:ec2::254", "0.0.0.0", "::ffff:127.0.0.1"] {
            assert!(is_sensitive(ip.parse().expect("ok")), "{ip}");
        }
        for ip in ["10.1.2.3", "93.184.216.34", "2001:db8::1"] {
            assert!(!is_sensitive(ip.parse().expect("ok")), "{ip}");
        }
    }
}
