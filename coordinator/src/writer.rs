//! The one way the rest of the coordinator writes: propose on the leader, or forward the
//! proposal to the leader over QUIC when this member follows. During an election it waits
//! (bounded) for a leader instead of failing at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::metric_names as m;
use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::COORDINATOR_SERVER_NAME;
use shoal_protocol::{Request, Response};
use tokio::sync::Mutex;

use crate::raft::transport::AddressBook;
use crate::raft::{Proposal, RaftHandle};
use crate::state::{Command, Outcome};
use crate::CoordinatorError;

/// How long a write waits for a leader to exist.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest a write waits for a leader change before asking the same leader again.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

#[derive(Clone)]
pub struct Writer {
    raft: RaftHandle,
    book: AddressBook,
    client: Option<Arc<quinn::ClientConfig>>,
    conns: Arc<Mutex<HashMap<u64, quinn::Connection>>>,
}

impl Writer {
    pub fn new(raft: RaftHandle, book: AddressBook, client: Option<Arc<quinn::ClientConfig>>) -> Self {
        Self { raft, book, client, conns: Default::default() }
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// Commits a command through the current leader.
    pub async fn command(&self, cmd: Command) -> Result<Outcome, CoordinatorError> {
        self.submit(Proposal::Command(cmd)).await
    }

    /// Commits a proposal through the current leader, wherever it is.
    pub async fn submit(&self, proposal: Proposal) -> Result<Outcome, CoordinatorError> {
        Ok(self.submit_indexed(proposal).await?.0)
    }

    /// [`Self::submit`], also returning the log index the proposal was applied at.
    pub async fn submit_indexed(&self, proposal: Proposal) -> Result<(Outcome, u64), CoordinatorError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let status = self.raft.status();
            let result = if status.is_leader() {
                self.raft.propose_indexed(proposal.clone()).await
            } else if status.leader_id != 0 {
                self.forward(status.leader_id, &proposal).await
            } else {
                Err(CoordinatorError::NotLeader { leader: None })
            };
            match result {
                // Not the leader, or raft dropped the proposal without appending it (a
                // leadership hand-over is under way): safe to send again to the next leader.
                Err(CoordinatorError::NotLeader { .. } | CoordinatorError::Raft(raft::Error::ProposalDropped))
                    if tokio::time::Instant::now() < deadline =>
                {
                    // Wait for another leader, but only briefly: the member this one takes
                    // for the leader may not know yet that it leads (it just won an election,
                    // or took over from a leader that stepped down), and then asking it again
                    // in a moment succeeds while no other leader ever comes.
                    let mut rx = self.raft.watch_status();
                    let before = status.leader_id;
                    let pause = (tokio::time::Instant::now() + RETRY_PAUSE).min(deadline);
                    let _ = tokio::time::timeout_at(pause, rx.wait_for(|s| s.leader_id != 0 && s.leader_id != before))
                        .await;
                }
                other => return other,
            }
        }
    }

    /// A connection to `leader`, and whether it was opened just now (not a pooled one).
    async fn connection(&self, leader: u64) -> Result<(quinn::Connection, bool), CoordinatorError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&leader).filter(|c| c.close_reason().is_none()) {
            return Ok((c.clone(), false));
        }
        let addr: String = self
            .book
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&leader)
            .cloned()
            .ok_or(CoordinatorError::NotLeader { leader: Some(leader) })?;
        let client = self.client.clone().ok_or(CoordinatorError::NotLeader { leader: Some(leader) })?;
        let connect = async {
            let to = quic::resolve(&addr).await?;
            let endpoint = quic::client_endpoint(to)?;
            quic::connect(&endpoint, to, (*client).clone(), COORDINATOR_SERVER_NAME).await
        };
        // A leader that just died does not answer: do not wait out QUIC's idle timeout.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| CoordinatorError::NotLeader { leader: None })??;
        conns.insert(leader, conn.clone());
        Ok((conn, true))
    }

    async fn forward(&self, leader: u64, proposal: &Proposal) -> Result<(Outcome, u64), CoordinatorError> {
        metrics::counter!(m::RAFT_FORWARDED).increment(1);
        let bytes = shoal_protocol::frame::to_payload(proposal)?.to_vec();
        let request = Request::Propose { proposal: bytes };
        let call = async {
            let (conn, fresh) = self.connection(leader).await?;
            let first = async {
                let mut s = ClientStream::open(&conn).await?;
                s.call(&request).await.map_err(CoordinatorError::from)
            }
            .await;
            match first {
                // A pooled connection to an earlier run of the leader's process (it restarted
                // at the same address) is reset at the first packet: connect afresh once,
                // instead of waiting for a leader change that is not coming.
                Err(CoordinatorError::Protocol(_)) if !fresh => {
                    self.conns.lock().await.remove(&leader);
                    let (conn, _) = self.connection(leader).await?;
                    let mut s = ClientStream::open(&conn).await?;
                    s.call(&request).await.map_err(CoordinatorError::from)
                }
                other => other,
            }
        };
        // If this member stops seeing `leader` as the leader (it died, or an election is
        // under way), stop waiting on it: the caller retries with the new leader.
        let mut status = self.raft.watch_status();
        let deposed = async move {
            let _ = status.wait_for(|s| s.leader_id != leader).await;
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(FORWARD_TIMEOUT, call) => answer,
            _ = deposed => {
                self.conns.lock().await.remove(&leader);
                return Err(CoordinatorError::NotLeader { leader: None });
            }
        };
        match answer {
            Err(_) => Err(CoordinatorError::ProposalTimeout),
            Ok(Err(CoordinatorError::Protocol(_))) => {
                self.conns.lock().await.remove(&leader);
                Err(CoordinatorError::NotLeader { leader: None })
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(Response::Proposed { outcome, index })) => Ok((shoal_protocol::frame::decode(&outcome)?, index)),
            Ok(Ok(Response::Refused { code: shoal_protocol::RefusalCode::NotLeader, .. })) => {
                Err(CoordinatorError::NotLeader { leader: None })
            }
            Ok(Ok(Response::Refused { message, .. })) => Err(CoordinatorError::Forward(message)),
            Ok(Ok(_)) => Err(CoordinatorError::Forward("unexpected answer from the leader".into())),
        }
    }
}
