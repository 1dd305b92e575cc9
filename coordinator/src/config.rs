//! Coordinator configuration: the raft group's members and the timing of leases.
//! Layered: defaults → file → flags, then [`ClusterConfig::validate`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_protocol::address::{check_host_port, listen_for};

use crate::CoordinatorError;

/// Default QUIC address of `shoal up`.
pub const DEFAULT_QUIC_ADDR: &str = "127.0.0.1:7100";
/// Default gateway address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// How often nodes heartbeat.
pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
/// How long a node may go without a heartbeat before it is declared dead.
pub const DEFAULT_LEASE_MS: u64 = 5_000;
/// Raft tick; heartbeat and election timeouts are counted in ticks.
pub const DEFAULT_TICK_MS: u64 = 50;
pub const DEFAULT_ELECTION_TICKS: usize = 10;
pub const DEFAULT_HEARTBEAT_TICKS: usize = 1;
/// Applied entries kept in the log before compaction.
pub const DEFAULT_COMPACT_AFTER: u64 = 10_000;

/// One coordinator of the raft group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// The QUIC address other members, nodes and gateways reach this one at: `ip:port`, or
    /// `dns-name:port` (resolved at each connection, so a member may come back at a new IP).
    pub quic: String,
    /// The gateway's HTTP address, in the same form (clients are redirected to it).
    pub http: String,
    /// The UDP address to bind for QUIC. Default: `quic` when its host is an IP address,
    /// else every interface on its port.
    #[serde(default)]
    pub listen_quic: Option<SocketAddr>,
    /// The TCP address to bind for HTTP; default as for `listen_quic`.
    #[serde(default)]
    pub listen_http: Option<SocketAddr>,
    /// Part of the group when it is first bootstrapped. A member with `initial = false`
    /// starts empty and waits to be added (`shoal coordinator add`).
    #[serde(default = "yes")]
    pub initial: bool,
}

impl MemberConfig {
    /// A member bound where it is reached (IP addresses).
    pub fn at(id: u64, quic: SocketAddr, http: SocketAddr) -> Self {
        Self { id, quic: quic.to_string(), http: http.to_string(), listen_quic: None, listen_http: None, initial: true }
    }

    /// Where this member binds its QUIC endpoint.
    pub fn quic_listen(&self) -> SocketAddr {
        self.listen_quic.or_else(|| listen_for(&self.quic)).unwrap_or_else(|| unchecked(&self.quic))
    }

    /// Where this member's gateway binds.
    pub fn http_listen(&self) -> SocketAddr {
        self.listen_http.or_else(|| listen_for(&self.http)).unwrap_or_else(|| unchecked(&self.http))
    }
}

/// Only reached for a config that skipped [`ClusterConfig::validate`].
fn unchecked(addr: &str) -> SocketAddr {
    panic!("member address '{addr}' was not validated")
}

fn yes() -> bool {
    true
}

/// Raft log handling.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Applied entries kept before the log is compacted into a snapshot.
    pub compact_after: u64,
    /// Fold proposals that arrive together into one append and one flush.
    pub batch_proposals: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self { compact_after: DEFAULT_COMPACT_AFTER, batch_proposals: true }
    }
}

/// Where the cluster CA lives.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// A directory holding the CA shared by every coordinator (`ca.crt`, `ca.key`), relative
    /// to the config file. Created by the first coordinator that finds it missing. Without
    /// it each coordinator keeps its own CA in its data dir (fine for a group of one).
    pub ca_dir: Option<PathBuf>,
}

/// Lease and raft timing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            lease_ms: DEFAULT_LEASE_MS,
            tick_ms: DEFAULT_TICK_MS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
        }
    }
}

impl TimingConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

/// The file `shoal coordinator --config` reads (see `cluster-configs/`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub coordinators: Vec<MemberConfig>,
    #[serde(default)]
    pub timing: TimingConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub pki: PkiConfig,
}

impl ClusterConfig {
    /// A single-coordinator group (what `shoal up` runs).
    pub fn single(quic: SocketAddr, http: SocketAddr) -> Self {
        Self {
            coordinators: vec![MemberConfig::at(1, quic, http)],
            timing: TimingConfig::default(),
            raft: RaftConfig::default(),
            pki: PkiConfig::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, CoordinatorError> {
        let err = |message: String| CoordinatorError::Config { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut cfg: ClusterConfig = toml::from_str(&text).map_err(|e| err(e.message().to_string()))?;
        if let Some(dir) = cfg.pki.ca_dir.as_mut() {
            if dir.is_relative() {
                *dir = path.parent().unwrap_or(Path::new(".")).join(&*dir);
            }
        }
        cfg.validate().map_err(err)
    }

    /// Checks the config is usable; the error names the bad value.
    pub fn validate(self) -> Result<Self, String> {
        if self.coordinators.is_empty() {
            return Err("no coordinators listed".into());
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for m in &self.coordinators {
            if m.id == 0 {
                return Err("coordinator id 0 is reserved; ids start at 1".into());
            }
            if !ids.insert(m.id) {
                return Err(format!("coordinator id {} is listed twice", m.id));
            }
            for (field, a) in [("quic", &m.quic), ("http", &m.http)] {
                check_host_port(a).map_err(|why| format!("coordinator {} {field}: {why}", m.id))?;
                if !addrs.insert(a.to_ascii_lowercase()) {
                    return Err(format!("address {a} is used twice"));
                }
            }
        }
        if !self.coordinators.iter().any(|m| m.initial) {
            return Err("no coordinator has initial = true; the group cannot bootstrap".into());
        }
        if self.coordinators.len() > 1 && self.pki.ca_dir.is_none() {
            return Err("a group of several coordinators needs [pki] ca_dir (the CA they share)".into());
        }
        if self.raft.compact_after == 0 {
            return Err("raft.compact_after must be positive".into());
        }
        let t = &self.timing;
        if t.heartbeat_ms == 0 || t.tick_ms == 0 {
            return Err("timing.heartbeat_ms and timing.tick_ms must be positive".into());
        }
        if t.lease_ms < 2 * t.heartbeat_ms {
            return Err(format!(
                "timing.lease_ms ({}) must be at least twice timing.heartbeat_ms ({})",
                t.lease_ms, t.heartbeat_ms
            ));
        }
        if t.heartbeat_ticks == 0 || t.election_ticks <= t.heartbeat_ticks {
            return Err(format!(
                "timing.election_ticks ({}) must exceed timing.heartbeat_ticks ({}) > 0",
                t.election_ticks, t.heartbeat_ticks
            ));
        }
        Ok(self)
    }

    pub fn member(&self, id: u64) -> Option<&MemberConfig> {
        self.coordinators.iter().find(|m| m.id == id)
    }

    /// The voters the group is bootstrapped with.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.coordinators.iter().filter(|m| m.initial).map(|m| m.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_cluster_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("cluster-configs exists") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no configs found in {}", dir.display());
    }

    #[test]
    fn bad_configs_name_the_bad_value() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let mut dup = ClusterConfig::single(a, b);
        dup.coordinators.push(MemberConfig::at(1, b, a));
        dup.pki.ca_dir = Some("ca".into());
        assert!(dup.validate().expect_err("duplicate id").contains("id 1"));
        let mut short = ClusterConfig::single(a, b);
        short.timing.lease_ms = 100;
        assert!(short.validate().expect_err("short lease").contains("lease_ms (100)"));
        let mut no_port = ClusterConfig::single(a, b);
        no_port.coordinators[0].quic = "shoal-0.shoal".into();
        assert!(no_port.validate().expect_err("no port").contains("coordinator 1 quic"));
    }

    #[test]
    fn dns_names_are_reached_by_name_and_bound_on_every_interface() {
        let text = r#"
            [[coordinators]]
            id = 1
            quic = "shoal-coordinator-0.shoal-coordinator.shoal.svc:7100"
            http = "shoal-coordinator-0.shoal-coordinator.shoal.svc:8080"
            [[coordinators]]
            id = 2
            quic = "shoal-coordinator-1.shoal-coordinator.shoal.svc:7100"
            http = "shoal-coordinator-1.shoal-coordinator.shoal.svc:8080"
            listen_quic = "10.0.0.7:7100"
            [pki]
            ca_dir = "/etc/shoal/ca"
        "#;
        let cfg: ClusterConfig = toml::from_str(text).expect("parses");
        let cfg = cfg.validate().expect("valid");
        let one = cfg.member(1).expect("member 1");
        assert_eq!(one.quic_listen(), "0.0.0.0:7100".parse::<SocketAddr>().expect("addr"));
        assert_eq!(one.http_listen(), "0.0.0.0:8080".parse::<SocketAddr>().expect("addr"));
        let two = cfg.member(2).expect("member 2");
        assert_eq!(two.quic_listen(), "10.0.0.7:7100".parse::<SocketAddr>().expect("addr"));
    }
}
