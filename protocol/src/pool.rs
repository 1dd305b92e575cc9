//! A pool of QUIC connections to cluster members, one per address, reopened when closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use quinn::{Connection, Endpoint};

use crate::quic::{self, ClientStream};
use crate::{ProtocolError, RefusalCode, Request, Response};

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Pool {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    conns: Mutex<HashMap<(SocketAddr, &'static str), Connection>>,
    connect_timeout: Duration,
}

/// Why a [`Pool::call`] got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (nothing was sent).
    #[error("cannot reach {addr}: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    /// Sent, but no answer came before the deadline (the outcome is unknown).
    #[error("{addr} did not answer in time")]
    Timeout { addr: SocketAddr },
    /// The peer answered with a refusal.
    #[error("{addr} refused: {message}")]
    Refused { addr: SocketAddr, code: RefusalCode, message: String },
    /// The stream broke after the request was sent (the outcome is unknown).
    #[error("{addr}: {why}")]
    Broken { addr: SocketAddr, why: String },
}

impl CallError {
    /// Whether the peer never took the request (unreachable, or refused it for want of a
    /// leader or capacity), so trying another peer cannot apply it twice.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, CallError::Unreachable { .. })
            || matches!(self, CallError::Refused { code, .. } if matches!(code, RefusalCode::NotLeader | RefusalCode::Unavailable | RefusalCode::Overloaded))
    }
}

impl Pool {
    pub fn new(config: quinn::ClientConfig) -> Result<Self, ProtocolError> {
        Self::with_connect_timeout(config, CONNECT_TIMEOUT)
    }

    /// A pool whose connection attempts give up after `connect_timeout`.
    pub fn with_connect_timeout(config: quinn::ClientConfig, connect_timeout: Duration) -> Result<Self, ProtocolError> {
        let endpoint = quic::client_endpoint("0.0.0.0:0".parse().map_err(|_| ProtocolError::Connect("bind".into()))?)?;
        Ok(Self { endpoint, config, conns: Mutex::new(HashMap::new()), connect_timeout })
    }

    /// Sends one request to `addr` and waits for its one answer until `deadline`. A
    /// connection that breaks is forgotten; a refusal comes back as [`CallError::Refused`].
    pub async fn call(
        &self,
        addr: SocketAddr,
        server_name: &'static str,
        request: &Request,
        deadline: tokio::time::Instant,
    ) -> Result<Response, CallError> {
        let unreachable = |e: ProtocolError| CallError::Unreachable { addr, why: e.to_string() };
        let mut stream = tokio::time::timeout_at(deadline, self.open(addr, server_name))
            .await
            .map_err(|_| CallError::Unreachable { addr, why: "no connection before the deadline".into() })?
            .map_err(unreachable)?;
        match tokio::time::timeout_at(deadline, stream.call(request)).await {
            Err(_) => {
                // A peer that died keeps its connection looking open until QUIC's idle
                // timeout: connect afresh next time.
                self.forget(addr, server_name);
                Err(CallError::Timeout { addr })
            }
            Ok(Ok(Response::Refused { code, message })) => Err(CallError::Refused { addr, code, message }),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(ProtocolError::Refused(message))) => {
                Err(CallError::Refused { addr, code: RefusalCode::BadRequest, message })
            }
            Ok(Err(e)) => {
                self.forget(addr, server_name);
                Err(CallError::Broken { addr, why: e.to_string() })
            }
        }
    }

    fn cached(&self, key: (SocketAddr, &'static str)) -> Option<Connection> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.get(&key).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Opens a stream to `addr` and sends `request`, for a request answered by several
    /// frames (read them from the stream returned). Errors as [`Self::call`]'s.
    pub async fn send(
        &self,
        addr: SocketAddr,
        server_name: &'static str,
        request: &Request,
    ) -> Result<ClientStream, CallError> {
        let mut stream =
            self.open(addr, server_name).await.map_err(|e| CallError::Unreachable { addr, why: e.to_string() })?;
        if let Err(e) = stream.send(request).await {
            self.forget(addr, server_name);
            return Err(CallError::Unreachable { addr, why: e.to_string() });
        }
        Ok(stream)
    }

    /// A connection to `addr` whose certificate is for `server_name`.
    pub async fn connection(&self, addr: SocketAddr, server_name: &'static str) -> Result<Connection, ProtocolError> {
        if let Some(c) = self.cached((addr, server_name)) {
            return Ok(c);
        }
        let conn = tokio::time::timeout(
            self.connect_timeout,
            quic::connect(&self.endpoint, addr, self.config.clone(), server_name),
        )
        .await
        .map_err(|_| ProtocolError::Connect(format!("{addr}: no answer within {:?}", self.connect_timeout)))??;
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
