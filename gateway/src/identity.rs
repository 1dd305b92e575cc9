//! A standalone gateway's identity on disk and the join that creates it: like a node, it
//! pins the cluster CA by hash and proves a join token; it receives a certificate with the
//! gateway role and the secret API keys are hashed with. What it was started with (the
//! coordinators, the HTTP address) is saved beside it, so it restarts with `--data-dir` only.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::{self, Identity, COORDINATOR_SERVER_NAME};
use shoal_protocol::token::JoinToken;
use shoal_protocol::{JoinRequest, ProtocolError, Request, Response};
use tracing::info;

use crate::GatewayError;

const CERT_FILE: &str = "gateway.crt";
const KEY_FILE: &str = "gateway.key";
const CA_FILE: &str = "ca.crt";
const SECRET_FILE: &str = "api-key-secret";
const CONF_FILE: &str = "gateway.conf";
/// How long a join waits for one coordinator to answer.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A joined gateway's credentials and settings.
#[derive(Clone)]
pub struct GatewayIdentity {
    pub gateway_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub key_secret: Vec<u8>,
    /// The coordinators' QUIC addresses (`host:port`).
    pub coordinators: Vec<String>,
    /// Where the HTTP API listens.
    pub http: SocketAddr,
}

impl GatewayIdentity {
    pub fn tls(&self) -> Result<Identity, GatewayError> {
        Ok(Identity::from_pem(&self.cert_pem, &self.key_pem, &self.ca_pem)?)
    }

    /// The SHA-256 of the cluster CA's public key (`sha256:…`).
    pub fn ca_hash(&self) -> Result<String, GatewayError> {
        Ok(format!("sha256:{}", tls::spki_sha256(&tls::pem_cert_der(&self.ca_pem)?)?))
    }

    /// Loads the identity saved in `dir`, if the gateway has joined before.
    pub fn load(dir: &Path) -> Result<Option<Self>, GatewayError> {
        let conf_path = dir.join(CONF_FILE);
        if !conf_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| fs::read_to_string(dir.join(name)).map_err(|e| GatewayError::io(dir.join(name), e));
        let bad = |why: String| GatewayError::Identity { path: conf_path.display().to_string(), why };
        let conf = read(CONF_FILE)?;
        let field = |key: &str| {
            conf.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
                .ok_or_else(|| bad(format!("no {key} line")))
        };
        let coordinators = field("coordinators")?
            .split(',')
            .map(|a| {
                let a = a.trim();
                shoal_protocol::address::check_host_port(a)
                    .map(|()| a.to_string())
                    .map_err(|e| bad(format!("coordinator address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = field("http")?.parse().map_err(|e| bad(format!("http address: {e}")))?;
        let key_secret = hex::decode(read(SECRET_FILE)?.trim()).map_err(|e| bad(format!("{SECRET_FILE}: {e}")))?;
        let id = Self {
            gateway_id: field("gateway_id")?,
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
            ca_pem: read(CA_FILE)?,
            key_secret,
            coordinators,
            http,
        };
        id.tls().map_err(|e| bad(e.to_string()))?;
        Ok(Some(id))
    }

    /// Saves the identity in `dir`; the key and the secret are owner-only.
    pub fn save(&self, dir: &Path) -> Result<(), GatewayError> {
        fs::create_dir_all(dir).map_err(|e| GatewayError::io(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| GatewayError::io(dir, e))?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(SECRET_FILE), &hex::encode(&self.key_secret), 0o600)?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, 0o644)?;
        write_file(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        let coordinators: Vec<String> = self.coordinators.iter().map(|a| a.to_string()).collect();
        let conf =
            format!("gateway_id={}\ncoordinators={}\nhttp={}\n", self.gateway_id, coordinators.join(","), self.http);
        // Written last: its presence means the rest is complete.
        write_file(&dir.join(CONF_FILE), &conf, 0o644)
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), GatewayError> {
    shoal_protocol::files::write_atomic(path, contents, mode).map_err(|e| GatewayError::io(path, e))
}

/// Joins as a gateway through the first of `coordinators` that takes the token (a follower
/// redirects to the leader).
pub async fn join(
    coordinators: &[String],
    token: &JoinToken,
    ca_hash: &str,
    name: &str,
    http: SocketAddr,
) -> Result<GatewayIdentity, GatewayError> {
    let (csr_der, key_pem) = tls::new_csr(name)?;
    let mut errors = Vec::new();
    let mut queue: Vec<String> = coordinators.to_vec();
    let mut tried = 0;
    while let Some(addr) = queue.first().cloned() {
        queue.remove(0);
        tried += 1;
        if tried > coordinators.len() + 3 {
            break;
        }
        let req = JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            name: name.to_string(),
            csr_der: csr_der.clone(),
            gateway: true,
        };
        match join_one(&addr, &req, ca_hash).await {
            Ok(Response::GatewayJoined { gateway_id, cert_pem, ca_pem, key_secret }) => {
                let got = tls::spki_sha256(&tls::pem_cert_der(&ca_pem)?)?;
                if got != tls::parse_ca_hash(ca_hash)? {
                    return Err(GatewayError::CaMismatch { expected: ca_hash.to_string(), presented: got });
                }
                info!(gateway = %gateway_id, "joined the cluster as a gateway");
                return Ok(GatewayIdentity {
                    gateway_id,
                    cert_pem,
                    key_pem,
                    ca_pem,
                    key_secret,
                    coordinators: coordinators.to_vec(),
                    http,
                });
            }
            Ok(Response::Refused { message, .. }) => return Err(GatewayError::JoinRefused(message)),
            Ok(Response::Redirect { leader_address }) => {
                match shoal_protocol::address::check_host_port(&leader_address) {
                    Ok(()) => queue.insert(0, leader_address),
                    Err(_) => errors.push(format!("{addr} redirected to '{leader_address}'")),
                }
            }
            Ok(_) => errors.push(format!("{addr}: unexpected answer")),
            Err(GatewayError::CaMismatch { expected, presented }) => {
                return Err(GatewayError::CaMismatch { expected, presented })
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(GatewayError::JoinRefused(format!(
        "no coordinator took the join (give their QUIC addresses as `shoal token create` prints them): {}",
        errors.join("; ")
    )))
}

async fn join_one(addr: &str, req: &JoinRequest, ca_hash: &str) -> Result<Response, GatewayError> {
    let (config, pin) = tls::pinned_client_config(ca_hash)?;
    let addr = quic::resolve(addr).await?;
    let endpoint = quic::client_endpoint(addr)?;
    let connecting = quic::connect(&endpoint, addr, config, COORDINATOR_SERVER_NAME);
    let conn = match tokio::time::timeout(JOIN_TIMEOUT, connecting).await {
        Err(_) => return Err(ProtocolError::Connect(format!("no coordinator answered at {addr}")).into()),
        Ok(Err(e)) => {
            return Err(match pin.mismatch() {
                Some(presented) => GatewayError::CaMismatch { expected: ca_hash.to_string(), presented },
                None => e.into(),
            })
        }
        Ok(Ok(c)) => c,
    };
    let mut stream = ClientStream::open(&conn).await?;
    let resp = tokio::time::timeout(JOIN_TIMEOUT, stream.call(&Request::Join(req.clone())))
        .await
        .map_err(|_| ProtocolError::Connect(format!("{addr} did not answer the join")))?;
    conn.close(0u32.into(), b"joined");
    Ok(resp?)
}
