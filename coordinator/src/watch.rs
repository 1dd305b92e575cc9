//! Serves the cluster view to gateways (`Request::Watch`): the applied state in pieces,
//! then the changes of every applied entry as this member applies them, and soft state
//! every [`SOFT_EVERY`]. A watcher that falls too far behind, or a snapshot installed here,
//! starts it again from the whole state.

use std::sync::Arc;

use shoal_protocol::metric_names as m;
use shoal_protocol::quic::ServerStream;
use shoal_protocol::{Response, ViewEntry};
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use crate::control::ControlPlane;
use crate::raft::driver::ViewEvent;
use crate::view::{LeaseView, SoftView, ViewChange, PIECE_BYTES, SOFT_EVERY};
use crate::CoordinatorError;

/// Streams the view until the gateway goes away.
pub async fn serve(cp: Arc<ControlPlane>, mut stream: ServerStream) {
    metrics::gauge!(m::VIEW_WATCHERS).increment(1.0);
    let result = stream_view(&cp, &mut stream).await;
    metrics::gauge!(m::VIEW_WATCHERS).decrement(1.0);
    if let Err(e) = result {
        debug!(error = %e, "a view watcher went away");
    }
}

async fn stream_view(cp: &ControlPlane, stream: &mut ServerStream) -> Result<(), CoordinatorError> {
    let gone = stream.abandoned();
    tokio::pin!(gone);
    // Subscribe before copying the state: every entry applied after the copy is heard.
    let mut events = cp.raft.subscribe_view();
    let mut sent = send_state(cp, stream).await?;
    let mut soft = tokio::time::interval(SOFT_EVERY);
    let mut status = cp.raft.watch_status();
    let mut shape = None;
    loop {
        tokio::select! {
            _ = &mut gone => return Ok(()),
            _ = soft.tick() => {
                let view = soft_view(cp);
                shape = Some(leadership(&view));
                let data = shoal_protocol::frame::to_payload(&view)?.to_vec();
                stream.send(&Response::ViewSoft { data }).await?;
            }
            // A change of leader, term or membership goes out at once (indexes only with
            // the next tick: they change with every write).
            Ok(()) = status.changed() => {
                let view = soft_view(cp);
                if shape.as_ref() != Some(&leadership(&view)) {
                    shape = Some(leadership(&view));
                    let data = shoal_protocol::frame::to_payload(&view)?.to_vec();
                    stream.send(&Response::ViewSoft { data }).await?;
                }
            }
            event = events.recv() => match event {
                Ok(ViewEvent::Applied(batch)) => {
                    let fresh: Vec<&(u64, ViewChange)> = batch.iter().filter(|(i, _)| *i > sent).collect();
                    if let Some((last, _)) = fresh.last() {
                        send_changes(stream, &fresh).await?;
                        sent = *last;
                    }
                }
                Ok(ViewEvent::Reset) | Err(RecvError::Lagged(_)) => {
                    events = cp.raft.subscribe_view();
                    sent = send_state(cp, stream).await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// Sends the applied state in pieces; returns its index.
async fn send_state(cp: &ControlPlane, stream: &mut ServerStream) -> Result<u64, CoordinatorError> {
    let (state, index) = cp.raft.state_at();
    let bytes = shoal_protocol::frame::to_stored_bytes(&state)?;
    let mut pieces = bytes.chunks(PIECE_BYTES).peekable();
    if pieces.peek().is_none() {
        stream.send(&Response::ViewState { index, data: Vec::new(), last: true }).await?;
    }
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        stream.send(&Response::ViewState { index, data: piece.to_vec(), last }).await?;
    }
    metrics::counter!(m::VIEW_STATES_SENT).increment(1);
    Ok(index)
}

async fn send_changes(stream: &mut ServerStream, changes: &[&(u64, ViewChange)]) -> Result<(), CoordinatorError> {
    let mut entries = Vec::new();
    let mut size = 0;
    for (index, change) in changes {
        let data = shoal_protocol::frame::to_payload(change)?.to_vec();
        if size + data.len() > PIECE_BYTES && !entries.is_empty() {
            stream.send(&Response::ViewChanges { entries: std::mem::take(&mut entries) }).await?;
            size = 0;
        }
        size += data.len() + 16;
        entries.push(ViewEntry { index: *index, data });
    }
    stream.send(&Response::ViewChanges { entries }).await?;
    Ok(())
}

/// What of the soft state is sent as soon as it changes.
fn leadership(v: &SoftView) -> (u64, u64, String, Vec<u64>, Vec<u64>) {
    (v.leader_id, v.term, v.role.clone(), v.voters.clone(), v.learners.clone())
}

/// This member's soft state: raft status, coordinator addresses, and (when it leads and
/// so receives heartbeats) node loads.
pub fn soft_view(cp: &ControlPlane) -> SoftView {
    let s = cp.raft.status();
    let coordinators = {
        let book = cp.coordinators.read().unwrap_or_else(|p| p.into_inner());
        let state = cp.raft.state().read().unwrap_or_else(|p| p.into_inner());
        book.iter()
            .map(|(id, addr)| {
                let http = state
                    .coordinators
                    .get(id)
                    .map(|c| c.http.clone())
                    .or_else(|| cp.configured_http.get(id).cloned())
                    .unwrap_or_default();
                (*id, addr.to_string(), http)
            })
            .collect()
    };
    let (loads, leases) = if s.is_leader() {
        let loads = cp.replica_load.lock().unwrap_or_else(|p| p.into_inner());
        let leases = cp.leases.lock().unwrap_or_else(|p| p.into_inner());
        (
            loads.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            leases
                .iter()
                .map(|(node, l)| LeaseView {
                    node: node.clone(),
                    generation: l.generation,
                    last_heartbeat_unix_ms: l.last_heartbeat_unix_ms,
                    load: l.load.clone(),
                })
                .collect(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    SoftView {
        coordinator_id: s.id,
        leader_id: s.leader_id,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        role: s.role.to_string(),
        voters: s.voters,
        learners: s.learners,
        first_index: s.first_index,
        last_index: s.last_index,
        coordinators,
        loads,
        leases,
    }
}
