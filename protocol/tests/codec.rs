//! Property tests for the frame codec: every message round-trips; no byte string makes
//! the decoder panic; truncation and oversize are reported as such.

use proptest::prelude::*;
use shoal_protocol::frame::{self, HEADER_BYTES, MAX_FRAME_BYTES};
use shoal_protocol::*;

fn arb_string() -> impl Strategy<Value = String> {
    "[a-z0-9:./ -]{0,24}"
}

fn arb_accel() -> impl Strategy<Value = Accelerator> {
    (
        prop_oneof![Just(AcceleratorKind::Gpu), Just(AcceleratorKind::Npu), Just(AcceleratorKind::Cpu)],
        arb_string(),
        arb_string(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(kind, vendor, model, total, free, discovered)| Accelerator {
            kind,
            vendor,
            model,
            memory_total_bytes: total,
            memory_free_bytes: free,
            compute_capability: "9.0".into(),
            discovered,
        })
}

fn arb_capacity() -> impl Strategy<Value = Capacity> {
    (any::<u32>(), any::<u64>(), prop::collection::vec(arb_accel(), 0..4)).prop_map(
        |(cpu_cores, memory_total_bytes, accelerators)| Capacity { cpu_cores, memory_total_bytes, accelerators },
    )
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (arb_string(), arb_string(), arb_string(), prop::collection::vec(any::<u8>(), 0..256)).prop_map(
            |(a, b, c, d)| {
                Request::Join(JoinRequest { token_id: a, token_secret: b, name: c, csr_der: d, gateway: false })
            }
        ),
        (
            arb_string(),
            arb_string(),
            arb_string(),
            arb_capacity(),
            prop::collection::vec((arb_string(), arb_string()), 0..4)
        )
            .prop_map(|(node_id, name, address, capacity, labels)| Request::Register(RegisterRequest {
                node_id,
                name,
                address,
                capacity,
                labels: labels.into_iter().map(|(key, value)| Label { key, value }).collect(),
                metrics: "127.0.0.1:9100".into(),
                incarnation: 7,
                mcp_stdio: false,
            })),
        (arb_string(), any::<u64>(), any::<u64>(), any::<u32>(), prop::collection::vec(any::<u64>(), 0..4)).prop_map(
            |(node_id, generation, seq, q, free)| Request::Heartbeat(Heartbeat {
                node_id,
                generation,
                seq,
                load: Load {
                    in_flight: q,
                    queue_depth: q / 2,
                    cpu_load_milli: 5,
                    memory_available_bytes: 7,
                    accelerator_free_bytes: free,
                    draining: q % 2 == 1,
                },
                replicas: Vec::new(),
            })
        ),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(seq, payload)| Request::Ping { seq, payload }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(from, message)| Request::Raft { from, message }),
        (arb_string(), prop::collection::vec(arb_string(), 0..4))
            .prop_map(|(server, command)| Request::McpStdio { server, command }),
        (arb_string(), any::<u64>()).prop_map(|(sha256, size)| Request::StoreArtifact { sha256, size }),
        (prop::collection::vec(any::<u8>(), 0..512), any::<bool>())
            .prop_map(|(data, last)| Request::Chunk { data, last }),
    ]
}

fn arb_stdio_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<u32>().prop_map(|pid| Response::StdioStarted { pid }),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|data| Response::StdioOut { data }),
        (arb_string(), arb_string()).prop_map(|(status, stderr)| Response::StdioExited { status, stderr }),
    ]
}

proptest! {
    #[test]
    fn stdio_relay_frames_round_trip(resp in arb_stdio_response()) {
        let bytes = frame::encode(&resp).expect("encode");
        let (back, used) = frame::decode_frame::<Response>(&bytes, MAX_FRAME_BYTES).expect("valid").expect("whole");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, resp);
    }

    #[test]
    fn every_request_round_trips(req in arb_request()) {
        let bytes = frame::encode(&req).expect("encode");
        let (back, used) = frame::decode_frame::<Request>(&bytes, MAX_FRAME_BYTES).expect("valid").expect("whole");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, req);
    }

    #[test]
    fn any_prefix_is_incomplete_never_wrong(req in arb_request(), cut in 0usize..64) {
        let bytes = frame::encode(&req).expect("encode");
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(matches!(frame::decode_frame::<Request>(&bytes[..cut], MAX_FRAME_BYTES), Ok(None)));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = frame::decode::<Request>(&bytes);
        let _ = frame::decode::<Response>(&bytes);
        let _ = frame::decode_frame::<Request>(&bytes, MAX_FRAME_BYTES);
    }

    #[test]
    fn flipped_bits_are_refused_or_decode_to_a_valid_message(req in arb_request(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut payload = frame::to_payload(&req).expect("encode").to_vec();
        let i = at.index(payload.len());
        payload[i] ^= 1 << bit;
        // Either refused, or a well-formed message (e.g. a flipped byte inside a string).
        if let Ok(msg) = frame::decode::<Request>(&payload) {
            let again = frame::encode(&msg).expect("re-encodes");
            prop_assert!(frame::decode_frame::<Request>(&again, MAX_FRAME_BYTES).is_ok());
        }
    }
}

#[test]
fn oversized_headers_are_refused_before_reading() {
    let header = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
    assert!(matches!(frame::payload_len(header, MAX_FRAME_BYTES), Err(ProtocolError::Oversized { .. })));
    let mut bytes = header.to_vec();
    bytes.extend([0u8; 16]);
    assert!(matches!(frame::decode_frame::<Request>(&bytes, MAX_FRAME_BYTES), Err(ProtocolError::Oversized { .. })));
}

#[test]
fn an_empty_frame_is_malformed() {
    assert!(matches!(frame::payload_len([0; HEADER_BYTES], MAX_FRAME_BYTES), Err(ProtocolError::Malformed(_))));
}

#[test]
fn a_message_over_the_limit_is_not_sent() {
    let big = Request::Ping { seq: 0, payload: vec![0; MAX_FRAME_BYTES + 1] };
    assert!(matches!(frame::encode(&big), Err(ProtocolError::Oversized { .. })));
}

#[test]
fn a_response_is_not_accepted_as_a_request() {
    let bytes = frame::to_payload(&Response::Welcome { version: 1 }).expect("encode");
    // Different types: validation must not hand back a bogus Request.
    if let Ok(r) = frame::decode::<Request>(&bytes) {
        panic!("a Welcome decoded as {r:?}");
    }
}
