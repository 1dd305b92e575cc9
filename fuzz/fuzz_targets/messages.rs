//! rkyv validation + deserialisation of every message that crosses the wire, and the
//! protobuf raft messages carried inside `Raft`/`RaftSnapshot` frames. The first byte picks
//! the type; the rest is the archive (as `frame::decode` gets it after the length prefix).
//! Also the raft log's segment files as a coordinator reads them back from disk (kind 14).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, Message as RaftMessage, Snapshot};
use shoal_coordinator::raft::storage::StoredState;
use shoal_coordinator::raft::Proposal;
use shoal_coordinator::state::{ClusterState, Command, CoordinatorRecord, Outcome};
use shoal_coordinator::view::{apply_change, SoftView, ViewChange};
use shoal_protocol::frame::{self, Encode};
use shoal_protocol::{Hello, Request, Response};

/// Decodes `payload` as `T`; a value that decodes must encode and decode again.
fn check<T>(payload: &[u8]) -> Option<T>
where
    T: rkyv::Archive + Encode,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let value = frame::decode::<T>(payload).ok()?;
    let bytes = frame::to_payload(&value).expect("re-encode a decoded message");
    frame::decode::<T>(&bytes).expect("decode a re-encoded message");
    Some(value)
}

/// What a receiver does next with a request's contents that is still pure.
fn after_request(req: &Request) {
    match req {
        Request::StageForward(f) => {
            for cols in [1, 64, 576] {
                if f.hidden.check_matrix(cols).is_ok() {
                    let _ = f.hidden.to_f32();
                }
            }
        }
        Request::Raft { message, .. } | Request::RaftSnapshot { message, .. } => {
            let _ = RaftMessage::parse_from_bytes(message);
        }
        Request::Propose { proposal } => {
            let _ = check::<Proposal>(proposal);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else { return };
    match kind % 15 {
        0 => {
            let _ = check::<Hello>(payload);
        }
        1 => {
            if let Some(req) = check::<Request>(payload) {
                let _ = req.kind();
                after_request(&req);
            }
        }
        2 => {
            let _ = check::<Response>(payload);
        }
        3 => {
            if let Some(p) = check::<Proposal>(payload) {
                let _ = p.kind();
            }
        }
        4 => {
            let _ = check::<Outcome>(payload);
        }
        5 => {
            if let Some(c) = check::<Command>(payload) {
                // The replicated state machine applies whatever a committed entry holds.
                let mut state = ClusterState::default();
                let _ = shoal_coordinator::state::apply(&mut state, &c);
            }
        }
        6 => {
            let _ = check::<CoordinatorRecord>(payload);
        }
        7 => {
            let _ = StoredState::decode(payload);
        }
        8 => {
            let _ = RaftMessage::parse_from_bytes(payload);
        }
        9 => {
            let _ = ConfChange::parse_from_bytes(payload);
            let _ = ConfChangeV2::parse_from_bytes(payload);
        }
        10 => {
            let _ = Entry::parse_from_bytes(payload);
        }
        // What a coordinator streams to gateways: a view change is applied to a replica.
        12 => {
            if let Some(change) = check::<ViewChange>(payload) {
                let mut state = ClusterState::default();
                apply_change(&mut state, &change);
            }
        }
        13 => {
            let _ = check::<SoftView>(payload);
        }
        // A raft log segment as read back from disk, as the newest segment (a torn tail may
        // be cut) and as an older one (it may not).
        14 => {
            for last in [true, false] {
                if let Ok(read) = shoal_coordinator::raft::wal::parse_segment(payload, last, "fuzz") {
                    assert!(read.end as usize <= payload.len().next_multiple_of(16));
                    for r in &read.records {
                        if r.kind == shoal_coordinator::raft::wal::Kind::Entry {
                            let _ = Entry::parse_from_bytes(&r.payload);
                        }
                    }
                }
            }
        }
        _ => {
            let _ = Snapshot::parse_from_bytes(payload);
        }
    }
});
