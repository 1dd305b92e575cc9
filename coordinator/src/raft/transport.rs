//! Sends raft messages to peer coordinators over QUIC (mutual TLS).
//!
//! One bounded queue and one task per peer; the task keeps a connection and a one-way
//! stream of `Request::Raft` frames. A full queue or a broken link drops messages: raft
//! retransmits, and a peer that is down is simply unreachable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::prelude::Message;
use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::COORDINATOR_SERVER_NAME;
use shoal_protocol::Request;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 1024;
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// The raft driver's outbox.
pub struct Transport {
    peers: HashMap<u64, mpsc::Sender<Message>>,
}

impl Transport {
    /// A transport for a group with no other members.
    pub fn none() -> Self {
        Self {
            peers: HashMap::new(),
        }
    }

    /// Starts one sender task per peer on the current tokio runtime.
    pub fn start(
        self_id: u64,
        peers: Vec<(u64, SocketAddr)>,
        client: Arc<quinn::ClientConfig>,
    ) -> Self {
        let mut map = HashMap::new();
        for (id, addr) in peers {
            if id == self_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(peer_loop(self_id, id, addr, client.clone(), rx));
            map.insert(id, tx);
        }
        Self { peers: map }
    }

    pub fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            match self.peers.get(&msg.to) {
                Some(tx) => {
                    if tx.try_send(msg).is_err() {
                        debug!("raft peer queue full; dropped a message");
                    }
                }
                None => warn!(to = msg.to, "raft message for an unknown peer"),
            }
        }
    }
}

async fn peer_loop(
    self_id: u64,
    peer: u64,
    addr: SocketAddr,
    client: Arc<quinn::ClientConfig>,
    mut rx: mpsc::Receiver<Message>,
) {
    let endpoint = match quic::client_endpoint(addr) {
        Ok(e) => e,
        Err(e) => {
            warn!(peer, error = %e, "cannot create a client endpoint for a raft peer");
            return;
        }
    };
    let mut stream: Option<ClientStream> = None;
    while let Some(msg) = rx.recv().await {
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode a raft message");
                continue;
            }
        };
        if stream.is_none() {
            match quic::connect(&endpoint, addr, (*client).clone(), COORDINATOR_SERVER_NAME).await {
                Ok(conn) => stream = ClientStream::open(&conn).await.ok(),
                Err(e) => {
                    debug!(peer, error = %e, "raft peer unreachable");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            }
        }
        if let Some(s) = stream.as_mut() {
            if s.send(&Request::Raft {
                from: self_id,
                message: bytes,
            })
            .await
            .is_err()
            {
                stream = None;
            }
        }
    }
}
