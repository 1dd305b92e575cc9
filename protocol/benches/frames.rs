//! Frame encode + validate + decode, per message kind.
//!
//! `cargo bench -p shoal-protocol --bench frames`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shoal_protocol::frame::{self, MAX_FRAME_BYTES};
use shoal_protocol::*;

fn capacity() -> Capacity {
    Capacity {
        cpu_cores: 64,
        memory_total_bytes: 512 << 30,
        accelerators: (0..8)
            .map(|i| Accelerator {
                kind: AcceleratorKind::Gpu,
                vendor: "nvidia".into(),
                model: format!("NVIDIA H200 #{i}"),
                memory_total_bytes: 141 << 30,
                memory_free_bytes: 140 << 30,
                compute_capability: "9.0".into(),
                discovered: true,
            })
            .collect(),
    }
}

fn messages() -> Vec<(&'static str, Request)> {
    vec![
        (
            "join",
            Request::Join(JoinRequest {
                token_id: "abcdef".into(),
                token_secret: "0123456789abcdef".into(),
                name: "gpu-node-17".into(),
                csr_der: vec![0x30; 420],
                gateway: false,
            }),
        ),
        (
            "register_8gpu",
            Request::Register(RegisterRequest {
                node_id: "n-0123456789".into(),
                name: "gpu-node-17".into(),
                address: "10.0.0.17:7200".into(),
                capacity: capacity(),
                labels: vec![Label { key: "zone".into(), value: "a".into() }],
                metrics: "10.0.0.17:9100".into(),
                incarnation: 7,
                mcp_stdio: false,
            }),
        ),
        (
            "heartbeat",
            Request::Heartbeat(Heartbeat {
                node_id: "n-0123456789".into(),
                generation: 3,
                seq: 123456,
                load: Load {
                    in_flight: 12,
                    queue_depth: 3,
                    cpu_load_milli: 1500,
                    memory_available_bytes: 200 << 30,
                    accelerator_free_bytes: vec![100 << 30; 8],
                    draining: false,
                },
                replicas: Vec::new(),
            }),
        ),
        ("ping_64B", Request::Ping { seq: 1, payload: vec![7; 64] }),
        ("ping_64KiB", Request::Ping { seq: 1, payload: vec![7; 64 << 10] }),
        ("raft_1KiB", Request::Raft { from: 1, message: vec![9; 1024] }),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_roundtrip");
    for (name, msg) in messages() {
        let len = frame::encode(&msg).expect("encode").len();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &msg, |b, msg| {
            b.iter(|| {
                let bytes = frame::encode(std::hint::black_box(msg)).expect("encode");
                let (back, _) = frame::decode_frame::<Request>(&bytes, MAX_FRAME_BYTES).expect("valid").expect("whole");
                std::hint::black_box(back)
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("frame_validate_decode");
    for (name, msg) in messages() {
        let payload = frame::to_payload(&msg).expect("encode");
        g.bench_with_input(BenchmarkId::from_parameter(name), &payload, |b, p| {
            b.iter(|| std::hint::black_box(frame::decode_aligned::<Request>(p).expect("valid")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
