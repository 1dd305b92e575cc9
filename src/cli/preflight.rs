//! Checks a server command makes before it starts anything, so a mistake is one line that
//! says what to do (and a node is never admitted when it could not have listened).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;

use anyhow::{anyhow, Context};

/// Takes the data directory for this process: a lock file held until the process ends. A
/// second shoal on the same directory is refused with the first one's process id.
pub fn lock_data_dir(dir: &Path, flag: &str) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join("shoal.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            file.flush()?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let who = match pid.trim() {
                "" => "another shoal process".to_string(),
                p => format!("another shoal process (pid {p})"),
            };
            Err(anyhow!("{who} is using the data dir {}: stop it, or give this one another {flag}", dir.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow!("cannot lock {}: {e}", path.display())),
    }
}

fn in_use(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Error {
    anyhow!("{addr} ({what}) is already in use, by another shoal or another program: pass {flag} with a free address")
}

/// Whether a UDP (QUIC) address can be bound now.
pub fn udp_free(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_ok()
}

/// Fails with the flag to change when the TCP (HTTP) address is taken.
pub fn check_tcp(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(in_use(addr, what, flag)),
        Err(e) => Err(anyhow!("cannot listen on {addr} ({what}): {e}; pass {flag} with another address")),
    }
}

/// Fails with the flag to change when the UDP (QUIC) address is taken.
pub fn check_udp(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<()> {
    match UdpSocket::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(in_use(addr, what, flag)),
        Err(e) => Err(anyhow!("cannot listen on {addr} ({what}): {e}; pass {flag} with another address")),
    }
}

/// A free UDP port on `ip`, chosen by the system.
pub fn free_udp(ip: std::net::IpAddr) -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).with_context(|| format!("no free UDP port on {ip}"))?;
    Ok(s.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_on_a_data_dir_is_told_who_has_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let held = lock_data_dir(dir.path(), "--data-dir").expect("first");
        // Another open file description stands in for another process.
        let e = lock_data_dir(dir.path(), "--data-dir").expect_err("second").to_string();
        assert!(e.contains(&format!("(pid {})", std::process::id())), "{e}");
        assert!(e.ends_with("give this one another --data-dir"), "{e}");
        drop(held);
        assert!(lock_data_dir(dir.path(), "--data-dir").is_ok(), "free again once the holder is gone");
    }

    #[test]
    fn taken_addresses_name_the_flag() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let e = check_tcp(addr, "gateway", "--http").expect_err("taken").to_string();
        assert!(e.contains("already in use") && e.contains("pass --http"), "{e}");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let uaddr = udp.local_addr().expect("addr");
        assert!(!udp_free(uaddr));
        assert!(check_udp(uaddr, "data plane", "--listen").expect_err("taken").to_string().contains("--listen"));
        drop(udp);
        assert!(udp_free(uaddr));
    }
}
