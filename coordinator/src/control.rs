//! The coordinator's QUIC side: joins, node sessions (registration + heartbeats), raft
//! messages from peer coordinators, and pings.
//!
//! Trust: a join needs no client certificate (it proves a token instead); everything else
//! needs a certificate from the cluster CA whose role and id match the request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as PbMessage;
use quinn::Connection;
use rand::Rng;
use shoal_protocol::artifact::ArtifactStore;
use shoal_protocol::metric_names as m;
use shoal_protocol::quic::{self, ServerStream};
use shoal_protocol::tls::{ClusterCa, MemberRole};
use shoal_protocol::token::{constant_time_eq, hash_secret};
use shoal_protocol::{JoinRequest, RefusalCode, RegisterRequest, Request, Response};
use tracing::{info, info_span, warn, Instrument};

use crate::assign;
use crate::clock::Clock;
use crate::config::TimingConfig;
use crate::lease::LeaseTable;
use crate::raft::transport::{AddressBook, Faults};
use crate::raft::{Proposal, RaftHandle};
use crate::state::{Command, NodeState, Outcome};
use crate::writer::Writer;

/// How often the leader sweeps leases.
const MIN_SWEEP: Duration = Duration::from_millis(100);
/// The largest snapshot a follower accepts.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// How often the leader compares deployments with placements.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// How often expired join tokens are pruned from the state.
const TOKEN_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Shared by every stream handler.
pub struct ControlPlane {
    pub raft: RaftHandle,
    pub writer: Writer,
    pub ca: ClusterCa,
    pub faults: Arc<Faults>,
    pub leases: Arc<Mutex<LeaseTable>>,
    pub timing: TimingConfig,
    pub clock: Clock,
    /// QUIC address of every coordinator, for redirects.
    pub coordinators: AddressBook,
    /// Model files registered through this coordinator, served to nodes by hash.
    pub artifacts: ArtifactStore,
    /// Outstanding work per placement as nodes report it (soft state, for the router).
    pub replica_load: Arc<Mutex<std::collections::HashMap<String, u32>>>,
    /// How API keys are hashed (its secret goes to gateways that join).
    pub key_hasher: crate::api_keys::KeyHasher,
    /// The HTTP address of each coordinator in the config (members added later carry theirs
    /// in the state).
    pub configured_http: std::collections::HashMap<u64, String>,
}

fn new_node_id() -> String {
    let mut rng = rand::rng();
    format!("n-{:010x}", rng.random::<u64>() & 0xff_ffff_ffff)
}

impl ControlPlane {
    /// Serves one stream: dispatches on its first request.
    pub async fn handle(self: Arc<Self>, conn: Connection, mut stream: ServerStream) {
        let remote = conn.remote_address();
        let first = match stream.recv().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return, // refused frames are counted and closed by `recv`
        };
        let peer = quic::peer_member(&conn);
        let span = info_span!("stream", %remote, kind = first.kind());
        async move {
            match first {
                Request::Join(j) => self.join(&mut stream, j, remote).await,
                Request::Register(r) => match peer {
                    Some((MemberRole::Node, id)) if id == r.node_id => self.session(stream, r).await,
                    _ => {
                        warn!("registration without a matching node certificate");
                        stream.refuse(RefusalCode::Unauthenticated, "registration needs this node's certificate").await
                    }
                },
                Request::Raft { from, message } => match peer {
                    Some((MemberRole::Coordinator, id)) if id == from.to_string() => {
                        self.raft_stream(stream, from, message).await
                    }
                    _ => {
                        stream
                            .refuse(RefusalCode::Unauthenticated, "raft messages need a coordinator certificate")
                            .await
                    }
                },
                Request::RaftSnapshot { from, message, total_bytes } => match peer {
                    Some((MemberRole::Coordinator, id)) if id == from.to_string() => {
                        self.snapshot_stream(stream, from, message, total_bytes).await
                    }
                    _ => {
                        let msg = "raft messages need a coordinator certificate";
                        stream.refuse(RefusalCode::Unauthenticated, msg).await
                    }
                },
                Request::Propose { proposal } => match peer {
                    // This member's own embedded gateway writes with this member's
                    // certificate: through the leader, like any gateway.
                    Some((MemberRole::Coordinator, id)) => {
                        let own = id == self.raft.status().id.to_string();
                        self.forwarded(stream, proposal, own).await
                    }
                    Some((MemberRole::Gateway, _)) => self.forwarded(stream, proposal, true).await,
                    _ => {
                        let msg = "writes need a coordinator or gateway certificate";
                        stream.refuse(RefusalCode::Unauthenticated, msg).await
                    }
                },
                Request::Watch { .. } => match peer {
                    Some((MemberRole::Coordinator | MemberRole::Gateway, _)) => {
                        crate::watch::serve(self.clone(), stream).await
                    }
                    _ => {
                        let msg = "the cluster view is served to gateways and coordinators only";
                        stream.refuse(RefusalCode::Unauthenticated, msg).await
                    }
                },
                Request::ReadIndex => match peer {
                    Some((MemberRole::Coordinator | MemberRole::Gateway, _)) => self.read_point(stream).await,
                    _ => {
                        let msg = "read points are served to gateways and coordinators only";
                        stream.refuse(RefusalCode::Unauthenticated, msg).await
                    }
                },
                Request::Chunk { .. } => stream.refuse(RefusalCode::BadRequest, "a chunk without a header").await,
                Request::Ping { seq, payload } => {
                    if peer.is_none() {
                        return stream.refuse(RefusalCode::Unauthenticated, "ping needs a member certificate").await;
                    }
                    pong_loop(stream, seq, payload).await
                }
                Request::Heartbeat(_) => stream.refuse(RefusalCode::BadRequest, "register before heartbeating").await,
                Request::FetchArtifact { sha256, offset } => {
                    if !matches!(peer, Some((MemberRole::Coordinator | MemberRole::Node, _))) {
                        let msg = "artifacts are served to coordinators and nodes only";
                        return stream.refuse(RefusalCode::Unauthenticated, msg).await;
                    }
                    self.artifacts.serve(&mut stream, &sha256, offset).await
                }
                Request::StoreArtifact { sha256, size } => {
                    if !matches!(peer, Some((MemberRole::Coordinator, _))) {
                        let msg = "only coordinators send artifacts to a coordinator";
                        return stream.refuse(RefusalCode::Unauthenticated, msg).await;
                    }
                    self.artifacts.receive(&mut stream, &sha256, size).await
                }
                Request::Generate(_)
                | Request::Embed { .. }
                | Request::EmbedDocument { .. }
                | Request::IndexUpsert { .. }
                | Request::IndexDelete { .. }
                | Request::IndexSearch { .. }
                | Request::IndexExport { .. }
                | Request::StageForward(_)
                | Request::StageRelease { .. }
                | Request::McpStdio { .. } => {
                    stream.refuse(RefusalCode::BadRequest, "models and tools run on nodes; send this to a node").await
                }
            }
        }
        .instrument(span)
        .await
    }

    fn redirect_target(&self) -> Option<String> {
        let leader = self.raft.status().leader_id;
        self.coordinators.read().unwrap_or_else(|p| p.into_inner()).get(&leader).map(|a| a.to_string())
    }

    /// Answers a request that only the leader may serve. Returns false if redirected.
    async fn ensure_leader(&self, stream: &mut ServerStream) -> bool {
        if self.raft.status().is_leader() {
            return true;
        }
        match self.redirect_target() {
            Some(leader_address) => {
                let _ = stream.send(&Response::Redirect { leader_address }).await;
                stream.finish();
            }
            None => stream.refuse(RefusalCode::Unavailable, "no raft leader at the moment; retry").await,
        }
        false
    }

    async fn join(&self, stream: &mut ServerStream, j: JoinRequest, remote: SocketAddr) {
        if !self.ensure_leader(stream).await {
            return;
        }
        let now = self.clock.unix_ms();
        let check = {
            let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
            match state.tokens.get(&j.token_id) {
                Some(t) if constant_time_eq(hash_secret(&j.token_secret).as_bytes(), t.secret_hash.as_bytes()) => {
                    if t.expires_at_ms <= now {
                        Err((RefusalCode::ExpiredToken, format!("join token {} has expired", j.token_id)))
                    } else {
                        Ok(())
                    }
                }
                _ => Err((RefusalCode::InvalidToken, "join token is not valid".to_string())),
            }
        };
        if let Err((code, message)) = check {
            metrics::counter!(m::JOINS_REFUSED, "reason" => code.as_str()).increment(1);
            warn!(%remote, token_id = %j.token_id, reason = code.as_str(), "refused a join");
            return stream.refuse(code, message).await;
        }
        if j.gateway {
            return self.admit_gateway(stream, &j, remote).await;
        }
        let id = new_node_id();
        let cert_pem = match self.ca.sign_csr(&j.csr_der, MemberRole::Node, &id) {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::JOINS_REFUSED, "reason" => "bad_csr").increment(1);
                return stream.refuse(RefusalCode::BadRequest, e.to_string()).await;
            }
        };
        let admit = Command::AdmitNode {
            id: id.clone(),
            name: j.name.clone(),
            at_ms: now,
            token_id: j.token_id.clone(),
            secret_hash: hash_secret(&j.token_secret),
        };
        match self.writer.command(admit).await {
            Ok(Outcome::Applied) => {}
            // The token was revoked or expired between the check and the commit.
            Ok(Outcome::Rejected(why)) if why == "expired token" => {
                let msg = format!("join token {} has expired", j.token_id);
                return stream.refuse(RefusalCode::ExpiredToken, msg).await;
            }
            Ok(other) => {
                let msg = format!("join refused: {other:?}");
                return stream.refuse(RefusalCode::InvalidToken, msg).await;
            }
            Err(e) => return stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
        }
        metrics::counter!(m::JOINS).increment(1);
        info!(node = %id, name = %j.name, %remote, "node joined");
        let resp = Response::Joined { node_id: id, cert_pem, ca_pem: self.ca.material.cert_pem.clone() };
        let _ = stream.send(&resp).await;
        stream.finish();
    }

    /// A gateway joining: a certificate with the gateway role and the API-key hashing
    /// secret. Gateways hold no replicated state of their own, so nothing is committed.
    async fn admit_gateway(&self, stream: &mut ServerStream, j: &JoinRequest, remote: SocketAddr) {
        let id = format!("g-{:08x}", rand::rng().random::<u32>());
        let cert_pem = match self.ca.sign_csr(&j.csr_der, MemberRole::Gateway, &id) {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::JOINS_REFUSED, "reason" => "bad_csr").increment(1);
                return stream.refuse(RefusalCode::BadRequest, e.to_string()).await;
            }
        };
        metrics::counter!(m::JOINS).increment(1);
        info!(gateway = %id, name = %j.name, %remote, "gateway joined");
        let resp = Response::GatewayJoined {
            gateway_id: id,
            cert_pem,
            ca_pem: self.ca.material.cert_pem.clone(),
            key_secret: self.key_hasher.secret().to_vec(),
        };
        let _ = stream.send(&resp).await;
        stream.finish();
    }

    /// A node's long-lived control stream: one registration, then heartbeats.
    async fn session(&self, mut stream: ServerStream, r: RegisterRequest) {
        if !self.ensure_leader(&mut stream).await {
            return;
        }
        let id = r.node_id.clone();
        let cmd = Command::NodeUp {
            id: id.clone(),
            name: r.name,
            address: r.address,
            capacity: r.capacity,
            labels: r.labels,
            metrics: r.metrics,
            incarnation: r.incarnation,
            mcp_stdio: r.mcp_stdio,
            at_ms: self.clock.unix_ms(),
        };
        let generation = match self.writer.command(cmd).await {
            Ok(Outcome::NodeUp { generation }) => generation,
            Ok(Outcome::Rejected(why)) => return stream.refuse(RefusalCode::UnknownNode, why).await,
            Ok(other) => return stream.refuse(RefusalCode::BadRequest, format!("{other:?}")).await,
            Err(e) => return stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
        };
        self.renew(&id, generation, None);
        info!(node = %id, generation, "node registered");
        let registered = Response::Registered {
            generation,
            heartbeat_interval_ms: self.timing.heartbeat_ms as u32,
            lease_ms: self.timing.lease_ms as u32,
            coordinators: {
                let book = self.coordinators.read().unwrap_or_else(|p| p.into_inner());
                book.values().map(|a| a.to_string()).collect()
            },
        };
        if stream.send(&registered).await.is_err() {
            return;
        }
        loop {
            let hb = match stream.recv().await {
                Ok(Some(Request::Heartbeat(hb))) => hb,
                Ok(Some(_)) => {
                    return stream.refuse(RefusalCode::BadRequest, "only heartbeats on a control stream").await
                }
                Ok(None) | Err(_) => return,
            };
            if hb.node_id != id {
                return stream.refuse(RefusalCode::Unauthenticated, "heartbeat for another node").await;
            }
            let current = {
                let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
                state.nodes.get(&id).map(|n| (n.generation, n.state))
            };
            if current != Some((hb.generation, NodeState::Ready)) {
                metrics::counter!(m::HEARTBEATS_REFUSED, "reason" => "stale_generation").increment(1);
                info!(node = %id, generation = hb.generation, "refused a heartbeat from a fenced incarnation");
                return stream
                    .refuse(RefusalCode::StaleGeneration, "this incarnation is no longer current; register again")
                    .await;
            }
            if !self.raft.status().is_leader() {
                let _ = self.ensure_leader(&mut stream).await;
                return;
            }
            self.renew(&id, hb.generation, Some(hb.load));
            metrics::counter!(m::HEARTBEATS).increment(1);
            {
                let mut load = self.replica_load.lock().unwrap_or_else(|p| p.into_inner());
                for r in &hb.replicas {
                    load.insert(r.placement_id.clone(), r.outstanding);
                }
            }
            let changes = {
                let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
                assign::status_changes(&state, &id, hb.generation, &hb.replicas, self.clock.unix_ms())
            };
            for change in changes {
                if let Err(e) = self.writer.command(change).await {
                    warn!(node = %id, error = %e, "could not record a replica's status");
                }
            }
            let (assignments, index_shards) = {
                let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
                let book = self.coordinators.read().unwrap_or_else(|p| p.into_inner());
                (
                    assign::assignments_for(&state, &id, hb.generation, |c| book.get(&c).map(|a| a.to_string())),
                    assign::index_assignments_for(&state, &id, hb.generation),
                )
            };
            let ack = Response::HeartbeatAck { generation: hb.generation, seq: hb.seq, assignments, index_shards };
            if stream.send(&ack).await.is_err() {
                return;
            }
        }
    }

    fn renew(&self, id: &str, generation: u64, load: Option<shoal_protocol::Load>) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.renew(id, generation, self.clock.now_ms(), self.timing.lease_ms, self.clock.unix_ms(), load);
    }

    /// A linearizable read point for a gateway: answered once this member has applied
    /// everything committed when it was asked.
    async fn read_point(&self, mut stream: ServerStream) {
        match self.raft.read_index().await {
            Ok(()) => {
                let index = self.raft.status().applied;
                let _ = stream.send(&Response::ReadIndexed { index }).await;
                stream.finish();
            }
            Err(e) => stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
        }
    }

    /// A write forwarded by a follower (committed here if this member leads), or sent by a
    /// gateway (`through_leader`: committed through the leader wherever it is).
    async fn forwarded(&self, mut stream: ServerStream, bytes: Vec<u8>, through_leader: bool) {
        let proposal: Proposal = match shoal_protocol::frame::decode(&bytes) {
            Ok(p) => p,
            Err(e) => return stream.refuse(RefusalCode::BadRequest, format!("bad proposal: {e}")).await,
        };
        let result = if through_leader {
            self.writer.submit_indexed(proposal).await
        } else {
            self.raft.propose_indexed(proposal).await
        };
        match result {
            Ok((outcome, index)) => match shoal_protocol::frame::to_payload(&outcome) {
                Ok(bytes) => {
                    let _ = stream.send(&Response::Proposed { outcome: bytes.to_vec(), index }).await;
                    stream.finish();
                }
                Err(e) => stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
            },
            // raft drops a proposal it never appended while it hands leadership over: the
            // writer can safely send it to the next leader.
            Err(crate::CoordinatorError::NotLeader { .. })
            | Err(crate::CoordinatorError::Raft(raft::Error::ProposalDropped)) => {
                stream.refuse(RefusalCode::NotLeader, "not the leader").await
            }
            Err(e) => stream.refuse(RefusalCode::Unavailable, e.to_string()).await,
        }
    }

    /// A snapshot streamed in chunks by the leader; acknowledged once handed to raft.
    async fn snapshot_stream(&self, mut stream: ServerStream, from: u64, head: Vec<u8>, total: u64) {
        if total > MAX_SNAPSHOT_BYTES {
            return stream
                .refuse(RefusalCode::BadRequest, format!("snapshot of {total} bytes is over the limit"))
                .await;
        }
        let mut msg = match raft::prelude::Message::parse_from_bytes(&head) {
            Ok(m) if m.from == from => m,
            _ => return stream.refuse(RefusalCode::BadRequest, "bad snapshot header").await,
        };
        let mut data = Vec::with_capacity(total as usize);
        loop {
            match stream.recv().await {
                Ok(Some(Request::Chunk { data: chunk, last })) => {
                    if data.len() + chunk.len() > total as usize {
                        return stream.refuse(RefusalCode::BadRequest, "snapshot longer than announced").await;
                    }
                    data.extend_from_slice(&chunk);
                    if last {
                        break;
                    }
                }
                Ok(Some(_)) => return stream.refuse(RefusalCode::BadRequest, "expected snapshot chunks").await,
                Ok(None) | Err(_) => return,
            }
        }
        if data.len() as u64 != total {
            return stream.refuse(RefusalCode::BadRequest, "snapshot shorter than announced").await;
        }
        if self.faults.is_isolated() {
            return;
        }
        msg.mut_snapshot().data = data.into();
        self.raft.step(msg);
        let _ = stream.send(&Response::RaftAck).await;
        stream.finish();
    }

    async fn raft_stream(&self, mut stream: ServerStream, from: u64, first: Vec<u8>) {
        let mut next = Some(first);
        while let Some(bytes) = next.take() {
            match raft::prelude::Message::parse_from_bytes(&bytes) {
                Ok(_) if self.faults.is_isolated() => {}
                Ok(msg) if msg.from == from => self.raft.step(msg),
                Ok(_) => return stream.refuse(RefusalCode::Unauthenticated, "raft message from another member").await,
                Err(e) => return stream.refuse(RefusalCode::BadRequest, format!("bad raft message: {e}")).await,
            }
            next = match stream.recv().await {
                Ok(Some(Request::Raft { from: f, message })) if f == from => Some(message),
                Ok(Some(_)) => {
                    return stream.refuse(RefusalCode::BadRequest, "only raft messages on a raft stream").await
                }
                Ok(None) | Err(_) => return,
            };
        }
    }

    /// The leader's lease sweeper: turns expired leases into `NodeDead` commands.
    pub async fn run_sweeper(self: Arc<Self>) {
        let every = (self.timing.lease() / 4).max(MIN_SWEEP);
        let mut ticker = tokio::time::interval(every);
        let mut leading_term = 0u64;
        let mut last_prune = self.clock.now_ms();
        loop {
            ticker.tick().await;
            let status = self.raft.status();
            if !status.is_leader() {
                leading_term = 0;
                continue;
            }
            let now = self.clock.now_ms();
            let expired = {
                let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                if leading_term != status.term {
                    // New leadership: every node gets a full lease from now.
                    leases.clear();
                    leading_term = status.term;
                }
                let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
                leases.sweep(&state, now, self.timing.lease_ms)
            };
            for (id, generation) in expired {
                metrics::counter!(m::LEASES_EXPIRED).increment(1);
                warn!(node = %id, generation, "lease expired; marking the node dead");
                let cmd = Command::NodeDead { id: id.clone(), generation, at_ms: self.clock.unix_ms() };
                if let Err(e) = self.writer.command(cmd).await {
                    warn!(node = %id, error = %e, "could not mark the node dead");
                }
            }
            if now.saturating_sub(last_prune) >= TOKEN_PRUNE_EVERY.as_millis() as u64 {
                last_prune = now;
                let prune = Command::PruneTokens { now_ms: self.clock.unix_ms() };
                let _ = self.writer.command(prune).await;
            }
        }
    }
}

impl ControlPlane {
    /// The leader's reconciliation loop: runs the scheduler against the replicated state and
    /// commits what it decides (placements made and removed).
    pub async fn run_reconciler(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(RECONCILE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !self.raft.status().is_leader() {
                continue;
            }
            let commands = {
                let state = self.raft.state().read().unwrap_or_else(|p| p.into_inner());
                for d in state.deployments.values() {
                    let ready = state.entry_points(&d.name).len();
                    metrics::gauge!(m::DEPLOYMENT_REPLICAS, "deployment" => d.name.clone()).set(ready as f64);
                    metrics::gauge!(m::DEPLOYMENT_REPLICAS_WANTED, "deployment" => d.name.clone())
                        .set(f64::from(d.replicas));
                }
                let now = self.clock.unix_ms();
                let mut commands = crate::scheduler::plan(&state, now);
                commands.extend(crate::knowledge::plan(&state, now));
                commands
            };
            for cmd in commands {
                let kind = cmd.kind();
                match self.writer.command(cmd).await {
                    Ok(outcome) => tracing::debug!(kind, ?outcome, "reconciled"),
                    Err(e) => {
                        warn!(kind, error = %e, "reconciliation step failed");
                        break;
                    }
                }
            }
        }
    }
}

async fn pong_loop(mut stream: ServerStream, seq: u64, payload: Vec<u8>) {
    let mut next = Some((seq, payload));
    while let Some((seq, payload)) = next.take() {
        if stream.send(&Response::Pong { seq, payload }).await.is_err() {
            return;
        }
        next = match stream.recv().await {
            Ok(Some(Request::Ping { seq, payload })) => Some((seq, payload)),
            Ok(Some(_)) => return stream.refuse(RefusalCode::BadRequest, "only pings on a ping stream").await,
            Ok(None) | Err(_) => None,
        };
    }
    stream.finish();
}
