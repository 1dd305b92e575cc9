//! Sends raft messages to peer coordinators over QUIC (mutual TLS).
//!
//! One bounded queue and one task per peer, started the first time a message is sent to
//! it; the task keeps a connection and a one-way stream of `Raft` frames. Snapshots go on
//! a stream of their own, in chunks, and the receiver acknowledges them. A full queue or a
//! link found dead by a peer's stateless reset (it restarted) connects again and sends
//! the messages of the last half second once more; a peer that cannot be reached gets its
//! messages dropped (raft retransmits) and is reported unreachable.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Message, MessageType};
use shoal_protocol::metric_names as m;
use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::COORDINATOR_SERVER_NAME;
use shoal_protocol::{Request, Response};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::state::ClusterState;

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 1024;
/// Bytes per snapshot chunk frame.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the transport tells the raft driver.
#[derive(Debug)]
pub enum Report {
    Unreachable(u64),
    Snapshot { to: u64, ok: bool },
}

/// Test-only fault injection, switched at runtime (see `docs/guarantees.md`).
#[derive(Debug, Default)]
pub struct Faults {
    /// Drop every raft message to and from this member.
    pub isolated: AtomicBool,
}

impl Faults {
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }
}

/// Where each coordinator listens, shared with whoever learns about new members.
/// Each member's QUIC address (`host:port`; names are resolved at each connection).
pub type AddressBook = Arc<RwLock<HashMap<u64, String>>>;

/// The raft driver's outbox.
pub struct Transport {
    self_id: u64,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    book: AddressBook,
    client: Option<Arc<quinn::ClientConfig>>,
    runtime: Option<tokio::runtime::Handle>,
    reports: Option<mpsc::Sender<Report>>,
    faults: Arc<Faults>,
}

impl Transport {
    /// A transport that sends nothing (a group of one that never grows, or tests).
    pub fn none() -> Self {
        Self {
            self_id: 0,
            peers: HashMap::new(),
            book: Default::default(),
            client: None,
            runtime: None,
            reports: None,
            faults: Default::default(),
        }
    }

    /// A transport whose peer tasks run on the current tokio runtime.
    pub fn new(
        self_id: u64,
        book: AddressBook,
        client: Arc<quinn::ClientConfig>,
        reports: mpsc::Sender<Report>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            self_id,
            peers: HashMap::new(),
            book,
            client: Some(client),
            runtime: tokio::runtime::Handle::try_current().ok(),
            reports: Some(reports),
            faults,
        }
    }

    /// Records the addresses of members that joined at runtime.
    pub fn learn(&mut self, state: &ClusterState, cs: &ConfState) {
        let mut book = self.book.write().unwrap_or_else(|p| p.into_inner());
        for id in cs.voters.iter().chain(cs.learners.iter()) {
            if let Some(c) = state.coordinators.get(id) {
                if shoal_protocol::address::split_host_port(&c.quic).is_some() {
                    book.insert(*id, c.quic.clone());
                }
            }
        }
    }

    fn report(&self, r: Report) {
        if let Some(tx) = &self.reports {
            let _ = tx.try_send(r);
        }
    }

    pub fn send(&mut self, msgs: Vec<Message>) {
        if self.faults.is_isolated() {
            return;
        }
        for msg in msgs {
            let to = msg.to;
            if !self.peers.contains_key(&to) && !self.start_peer(to) {
                debug!(to, "raft message for a member with no known address");
                self.report(Report::Unreachable(to));
                continue;
            }
            if let Some(tx) = self.peers.get(&to) {
                let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
                if tx.try_send(msg).is_err() {
                    debug!(to, "raft peer queue full; dropped a message");
                    if is_snapshot {
                        self.report(Report::Snapshot { to, ok: false });
                    }
                    self.report(Report::Unreachable(to));
                }
            }
        }
    }

    fn start_peer(&mut self, to: u64) -> bool {
        let addr = self.book.read().unwrap_or_else(|p| p.into_inner()).get(&to).cloned();
        let (Some(addr), Some(client), Some(rt), Some(reports)) =
            (addr, self.client.clone(), self.runtime.clone(), self.reports.clone())
        else {
            return false;
        };
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        rt.spawn(peer_loop(self.self_id, to, addr, client, rx, reports, self.faults.clone()));
        self.peers.insert(to, tx);
        true
    }
}

/// How long a sent raft message is kept to send again if its connection turns out to have
/// been dead: a peer that restarted answers the first packet on a connection to its
/// previous run with a stateless reset, one round trip after the message was lost.
const RESEND_WINDOW: Duration = Duration::from_millis(500);
/// At most this many messages are kept for sending again.
const RESEND_MAX: usize = 256;

/// One peer's link: the connection, its stream of `Raft` frames, and what was sent on them
/// lately.
struct Link {
    self_id: u64,
    peer: u64,
    addr: String,
    client: Arc<quinn::ClientConfig>,
    /// One endpoint per address family, made when first needed: a name may resolve to
    /// another address (and family) after the peer moves.
    endpoints: HashMap<bool, quinn::Endpoint>,
    conn: Option<quinn::Connection>,
    stream: Option<ClientStream>,
    recent: VecDeque<(Instant, Vec<u8>)>,
}

impl Link {
    /// The live connection, connecting first when there is none.
    async fn connection(&mut self) -> Result<quinn::Connection, shoal_protocol::ProtocolError> {
        if let Some(c) = self.conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        self.forget();
        let connect = async {
            let to = quic::resolve(&self.addr).await?;
            let endpoint = match self.endpoints.get(&to.is_ipv6()) {
                Some(e) => e.clone(),
                None => {
                    let e = quic::client_endpoint(to)?;
                    self.endpoints.insert(to.is_ipv6(), e.clone());
                    e
                }
            };
            quic::connect(&endpoint, to, (*self.client).clone(), COORDINATOR_SERVER_NAME).await
        };
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(shoal_protocol::ProtocolError::Connect("timed out".into())))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection and its stream (what was sent on them stays in `recent`).
    fn forget(&mut self) {
        self.conn = None;
        self.stream = None;
    }

    /// Writes one encoded message on the link's stream; false when the connection is dead.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        let Ok(c) = self.connection().await else { return false };
        if self.stream.is_none() {
            self.stream = ClientStream::open(&c).await.ok();
        }
        let req = Request::Raft { from: self.self_id, message: bytes.to_vec() };
        match self.stream.as_mut() {
            Some(s) => s.send(&req).await.is_ok(),
            None => false,
        }
    }

    /// Sends a message and keeps it for [`RESEND_WINDOW`]. When the connection is found dead,
    /// connects again and sends everything kept (this message included) on the new one:
    /// raft ignores the duplicates, and a vote or an append lost on a connection to a
    /// restarted peer's previous run is not left to an election timeout. False when the peer
    /// cannot be reached.
    async fn send(&mut self, bytes: Vec<u8>) -> bool {
        let now = Instant::now();
        while self.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RESEND_WINDOW) {
            self.recent.pop_front();
        }
        if self.recent.len() == RESEND_MAX {
            self.recent.pop_front();
        }
        if self.connection().await.is_err() {
            return false;
        }
        let sent = self.write(&bytes).await;
        self.recent.push_back((now, bytes));
        sent || self.resend().await
    }

    /// Connects again and sends the messages of the last [`RESEND_WINDOW`]; false (and
    /// nothing kept) when that fails too.
    async fn resend(&mut self) -> bool {
        self.forget();
        let now = Instant::now();
        // Each keeps the time it was first sent: a link reset again and again does not
        // keep old messages alive.
        self.recent.retain(|(t, _)| now.duration_since(*t) <= RESEND_WINDOW);
        let kept = std::mem::take(&mut self.recent);
        for (_, bytes) in &kept {
            if !self.write(bytes).await {
                self.forget();
                return false;
            }
        }
        debug!(peer = self.peer, messages = kept.len(), "sent raft messages again on a new connection");
        metrics::counter!(m::RAFT_MESSAGES_RESENT).increment(kept.len() as u64);
        self.recent = kept;
        true
    }
}

/// Resolves when `conn` closes; never when there is none.
async fn closed(conn: Option<quinn::Connection>) -> quinn::ConnectionError {
    match conn {
        Some(c) => c.closed().await,
        None => std::future::pending().await,
    }
}

async fn peer_loop(
    self_id: u64,
    peer: u64,
    addr: String,
    client: Arc<quinn::ClientConfig>,
    mut rx: mpsc::Receiver<Message>,
    reports: mpsc::Sender<Report>,
    faults: Arc<Faults>,
) {
    let mut link = Link {
        self_id,
        peer,
        addr,
        client,
        endpoints: HashMap::new(),
        conn: None,
        stream: None,
        recent: VecDeque::new(),
    };
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => break,
            },
            reason = closed(link.conn.clone()) => {
                // A reset means the peer restarted and lost the connection: what was sent on
                // it lately went nowhere. Any other end (a close, the idle timeout) leaves
                // nothing to send again; the next message connects.
                debug!(peer, %reason, "raft link closed");
                if !matches!(reason, quinn::ConnectionError::Reset) {
                    link.forget();
                } else if !link.resend().await {
                    let _ = reports.try_send(Report::Unreachable(peer));
                }
                continue;
            }
        };
        if faults.is_isolated() {
            continue;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let ok = match link.connection().await {
                Ok(c) => tokio::time::timeout(SNAPSHOT_TIMEOUT, send_snapshot(&c, self_id, msg)).await.unwrap_or(false),
                Err(e) => {
                    debug!(peer, error = %e, "raft peer unreachable");
                    false
                }
            };
            if ok {
                metrics::counter!(m::RAFT_SNAPSHOTS_SENT).increment(1);
            } else {
                let _ = reports.try_send(Report::Unreachable(peer));
            }
            let _ = reports.try_send(Report::Snapshot { to: peer, ok });
            continue;
        }
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode a raft message");
                continue;
            }
        };
        if !link.send(bytes).await {
            debug!(peer, "raft peer unreachable");
            let _ = reports.try_send(Report::Unreachable(peer));
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }
}

/// Streams a snapshot: the message without its data, then the data in chunks; waits for
/// the receiver's acknowledgement.
async fn send_snapshot(conn: &quinn::Connection, self_id: u64, mut msg: Message) -> bool {
    let data = std::mem::take(&mut msg.mut_snapshot().data);
    let Ok(head) = msg.write_to_bytes() else { return false };
    let Ok(mut s) = ClientStream::open(conn).await else { return false };
    let begin = Request::RaftSnapshot { from: self_id, message: head, total_bytes: data.len() as u64 };
    if s.send(&begin).await.is_err() {
        return false;
    }
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(SNAPSHOT_CHUNK).collect() };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        if s.send(&Request::Chunk { data: chunk.to_vec(), last: i + 1 == n }).await.is_err() {
            return false;
        }
    }
    matches!(s.recv().await, Ok(Response::RaftAck))
}
