//! The node's identity on disk (its key, its certificate, the cluster CA) and the join
//! that creates it.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::{self, Identity, COORDINATOR_SERVER_NAME};
use shoal_protocol::token::JoinToken;
use shoal_protocol::{JoinRequest, ProtocolError, Request, Response};
use tracing::info;

use crate::NodeError;

const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
const CA_FILE: &str = "ca.crt";
const META_FILE: &str = "node.conf";
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;

/// A joined node's credentials.
#[derive(Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl NodeIdentity {
    pub fn tls(&self) -> Result<Identity, NodeError> {
        Ok(Identity::from_pem(&self.cert_pem, &self.key_pem, &self.ca_pem)?)
    }

    /// Loads the identity saved in `dir`, if the node has joined before.
    pub fn load(dir: &Path) -> Result<Option<Self>, NodeError> {
        let meta = dir.join(META_FILE);
        if !meta.exists() {
            return Ok(None);
        }
        let read = |name: &str| fs::read_to_string(dir.join(name)).map_err(|e| NodeError::io(dir.join(name), e));
        let conf = read(META_FILE)?;
        let node_id =
            conf.lines().find_map(|l| l.strip_prefix("node_id=")).map(str::to_string).ok_or_else(|| {
                NodeError::Identity { path: meta.display().to_string(), why: "no node_id line".into() }
            })?;
        let id = Self { node_id, cert_pem: read(CERT_FILE)?, key_pem: read(KEY_FILE)?, ca_pem: read(CA_FILE)? };
        id.tls().map_err(|e| NodeError::Identity { path: dir.display().to_string(), why: e.to_string() })?;
        Ok(Some(id))
    }

    /// Saves the identity in `dir`; the key is owner-only.
    pub fn save(&self, dir: &Path) -> Result<(), NodeError> {
        fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, 0o644)?;
        write_file(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        // Written last: its presence means the rest is complete.
        write_file(&dir.join(META_FILE), &format!("node_id={}\n", self.node_id), 0o644)
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), NodeError> {
    shoal_protocol::files::write_atomic(path, contents, mode).map_err(|e| NodeError::io(path, e))
}

/// Resolves `host:port` (IPv4 first, as every Shoal process does).
pub async fn resolve(addr: &str) -> Result<SocketAddr, NodeError> {
    shoal_protocol::quic::resolve(addr).await.map_err(|_| NodeError::Address(addr.to_string()))
}

/// How long joining waits for the coordinator to answer at all.
pub const JOIN_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Joins the cluster at `coordinator`: pins the CA by hash, proves the token, sends a CSR
/// for a key made here, and returns the identity the coordinator issued.
pub async fn join(coordinator: &str, token: &JoinToken, ca_hash: &str, name: &str) -> Result<NodeIdentity, NodeError> {
    let (csr_der, key_pem) = tls::new_csr(name)?;
    let mut target = coordinator.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let addr = resolve(&target).await?;
        let (config, pin) = tls::pinned_client_config(ca_hash)?;
        let endpoint = quic::client_endpoint(addr)?;
        let connecting = quic::connect(&endpoint, addr, config, COORDINATOR_SERVER_NAME);
        let silent = || -> NodeError {
            ProtocolError::Connect(format!(
                "no coordinator answered at {addr}: give the coordinator's QUIC address as `shoal token create` \
                 prints it (not its HTTP port), and check that the coordinator runs"
            ))
            .into()
        };
        let Ok(connected) = tokio::time::timeout(JOIN_CONNECT_TIMEOUT, connecting).await else {
            return Err(silent());
        };
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                return Err(match pin.mismatch() {
                    Some(presented) => NodeError::CaMismatch { expected: ca_hash.to_string(), presented },
                    None if e.to_string().contains("timed out") => silent(),
                    None => e.into(),
                })
            }
        };
        let mut stream = ClientStream::open(&conn).await?;
        let req = JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            name: name.to_string(),
            csr_der: csr_der.clone(),
            gateway: false,
        };
        let resp = stream.call(&Request::Join(req)).await;
        conn.close(0u32.into(), b"joined");
        match resp? {
            Response::Joined { node_id, cert_pem, ca_pem } => {
                let got = tls::spki_sha256(&tls::pem_cert_der(&ca_pem)?)?;
                if got != tls::parse_ca_hash(ca_hash)? {
                    return Err(NodeError::CaMismatch { expected: ca_hash.to_string(), presented: got });
                }
                info!(node = %node_id, "joined the cluster");
                return Ok(NodeIdentity { node_id, cert_pem, key_pem, ca_pem });
            }
            Response::Refused { message, .. } => return Err(NodeError::JoinRefused(message)),
            Response::Redirect { leader_address } => target = leader_address,
            _ => return Err(ProtocolError::Unexpected { expected: "joined" }.into()),
        }
    }
    Err(NodeError::JoinRefused("too many redirects".into()))
}
