//! A pool of QUIC connections to cluster members, one per address, reopened when closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use quinn::{Connection, Endpoint};

use crate::quic::{self, ClientStream};
use crate::ProtocolError;

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Pool {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    conns: Mutex<HashMap<(SocketAddr, &'static str), Connection>>,
}

impl Pool {
    pub fn new(config: quinn::ClientConfig) -> Result<Self, ProtocolError> {
        let endpoint = quic::client_endpoint("0.0.0.0:0".parse().map_err(|_| ProtocolError::Connect("bind".into()))?)?;
        Ok(Self { endpoint, config, conns: Mutex::new(HashMap::new()) })
    }

    fn cached(&self, key: (SocketAddr, &'static str)) -> Option<Connection> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.get(&key).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// A connection to `addr` whose certificate is for `server_name`.
    pub async fn connection(&self, addr: SocketAddr, server_name: &'static str) -> Result<Connection, ProtocolError> {
        if let Some(c) = self.cached((addr, server_name)) {
            return Ok(c);
        }
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            quic::connect(&self.endpoint, addr, self.config.clone(), server_name),
        )
        .await
        .map_err(|_| ProtocolError::Connect(format!("{addr}: no answer within {CONNECT_TIMEOUT:?}")))??;
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert((addr, server_name), conn.clone());
        Ok(conn)
    }

    /// Opens a stream to `addr`, reconnecting once if the pooled connection broke.
    pub async fn open(&self, addr: SocketAddr, server_name: &'static str) -> Result<ClientStream, ProtocolError> {
        let conn = self.connection(addr, server_name).await?;
        match ClientStream::open(&conn).await {
            Ok(s) => Ok(s),
            Err(_) => {
                self.forget(addr, server_name);
                let conn = self.connection(addr, server_name).await?;
                ClientStream::open(&conn).await
            }
        }
    }

    /// Drops the pooled connection to `addr` (after it failed).
    pub fn forget(&self, addr: SocketAddr, server_name: &'static str) {
        if let Some(c) = self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&(addr, server_name)) {
            c.close(0u32.into(), b"forgotten");
        }
    }
}
