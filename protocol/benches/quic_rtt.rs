//! Request/response round trip over QUIC on loopback (mutual TLS, one stream, Ping/Pong
//! frames), beside the same frames over a plain TCP socket: what the mesh's transport
//! costs over the simplest thing a user could pick.
//!
//! `cargo bench -p shoal-protocol --bench quic_rtt` prints criterion's figures, then
//! p50/p99 and messages/s over a fixed run of each.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use shoal_protocol::frame::{self, MAX_FRAME_BYTES};
use shoal_protocol::quic::{self, ClientStream, ServerStream};
use shoal_protocol::tls::{ClusterCa, Identity, MemberRole, COORDINATOR_SERVER_NAME};
use shoal_protocol::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PAYLOAD: usize = 64;
const FIXED_RUN: usize = 20_000;

async fn echo(_conn: quinn::Connection, mut s: ServerStream) {
    while let Ok(Some(Request::Ping { seq, payload })) = s.recv().await {
        if s.send(&Response::Pong { seq, payload }).await.is_err() {
            return;
        }
    }
}

async fn quic_pair() -> ClientStream {
    shoal_protocol::install_crypto_provider();
    let ca = ClusterCa::generate().expect("ca");
    let server = ca.issue_with_new_key(MemberRole::Coordinator, "1", &[]).expect("server cert");
    let client = ca.issue_with_new_key(MemberRole::Node, "bench", &[]).expect("client cert");
    let s_id = Identity::from_pem(&server.cert_pem, &server.key_pem, &ca.material.cert_pem).expect("id");
    let c_id = Identity::from_pem(&client.cert_pem, &client.key_pem, &ca.material.cert_pem).expect("id");
    let endpoint =
        quic::server_endpoint("127.0.0.1:0".parse().expect("addr"), s_id.server_config().expect("cfg")).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    tokio::spawn(quic::serve(endpoint, echo));
    let ce = quic::client_endpoint(addr).expect("client");
    let conn =
        quic::connect(&ce, addr, c_id.client_config().expect("cfg"), COORDINATOR_SERVER_NAME).await.expect("connect");
    // keep the client endpoint alive with the connection
    std::mem::forget(ce);
    let mut s = ClientStream::open(&conn).await.expect("open");
    std::mem::forget(conn);
    s.call(&Request::Ping { seq: 0, payload: vec![] }).await.expect("warm-up");
    s
}

async fn quic_call(s: &mut ClientStream, seq: u64) {
    match s.call(&Request::Ping { seq, payload: vec![1; PAYLOAD] }).await {
        Ok(Response::Pong { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

async fn tcp_pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        sock.set_nodelay(true).expect("nodelay");
        let mut header = [0u8; 4];
        loop {
            if sock.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = frame::payload_len(header, MAX_FRAME_BYTES).expect("len");
            let mut buf = vec![0u8; len];
            sock.read_exact(&mut buf).await.expect("payload");
            let Request::Ping { seq, payload } = frame::decode::<Request>(&buf).expect("valid") else {
                return;
            };
            let out = frame::encode(&Response::Pong { seq, payload }).expect("encode");
            sock.write_all(&out).await.expect("write");
        }
    });
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

async fn tcp_call(s: &mut TcpStream, seq: u64) {
    let out = frame::encode(&Request::Ping { seq, payload: vec![1; PAYLOAD] }).expect("encode");
    s.write_all(&out).await.expect("write");
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.expect("header");
    let len = frame::payload_len(header, MAX_FRAME_BYTES).expect("len");
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.expect("payload");
    let _: Response = frame::decode(&buf).expect("valid");
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("rt");
    let mut q = rt.block_on(quic_pair());
    let mut t = rt.block_on(tcp_pair());
    let mut g = c.benchmark_group("rtt_64B");
    let mut seq = 0u64;
    g.bench_function("quic_mtls", |b| {
        b.iter(|| {
            seq += 1;
            rt.block_on(quic_call(&mut q, seq))
        })
    });
    g.bench_function("tcp_plain", |b| {
        b.iter(|| {
            seq += 1;
            rt.block_on(tcp_call(&mut t, seq))
        })
    });
    g.finish();
}

fn percentiles(name: &str, mut lat: Vec<Duration>, total: Duration) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{name:<12} p50 {:>7.1} µs   p99 {:>7.1} µs   {:>8.0} msg/s  ({} sequential round trips, {PAYLOAD} B payload)",
        p(0.50),
        p(0.99),
        lat.len() as f64 / total.as_secs_f64(),
        lat.len()
    );
}

fn fixed_runs() {
    let rt = Runtime::new().expect("rt");
    rt.block_on(async {
        let mut q = quic_pair().await;
        let mut lat = Vec::with_capacity(FIXED_RUN);
        let start = Instant::now();
        for i in 0..FIXED_RUN as u64 {
            let t0 = Instant::now();
            quic_call(&mut q, i).await;
            lat.push(t0.elapsed());
        }
        percentiles("quic_mtls", lat, start.elapsed());
        let mut t = tcp_pair().await;
        let mut lat = Vec::with_capacity(FIXED_RUN);
        let start = Instant::now();
        for i in 0..FIXED_RUN as u64 {
            let t0 = Instant::now();
            tcp_call(&mut t, i).await;
            lat.push(t0.elapsed());
        }
        percentiles("tcp_plain", lat, start.elapsed());
    });
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    fixed_runs();
}
