//! Bad bytes at the coordinator's QUIC port: garbage datagrams, malformed, truncated and
//! oversized frames, and a wrong protocol version. None may take the process down; every
//! refused frame is counted.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use shoal_protocol::quic::{self, ClientStream};
use shoal_protocol::tls::{pinned_client_config, COORDINATOR_SERVER_NAME};
use shoal_protocol::{ProtocolError, Request, Response};
use support::*;

async fn connect(coord: &Coord, hash: &str) -> quinn::Connection {
    let (cfg, _) = pinned_client_config(hash).expect("client config");
    let endpoint = quic::client_endpoint(coord.quic).expect("endpoint");
    quic::connect(&endpoint, coord.quic, cfg, COORDINATOR_SERVER_NAME).await.expect("connect")
}

/// Reads until the server ends or resets the stream.
async fn expect_closed(stream: &mut ClientStream) {
    let r = tokio::time::timeout(Duration::from_secs(5), stream.recv()).await.expect("server answers");
    assert!(r.is_err(), "the server must close a stream that sent a bad frame, got {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_refused_counted_and_survived() {
    shoal_protocol::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tmp");
    let coord = tokio::task::block_in_place(|| Coord::start(&tmp.path().join("c"), 300, 1500));
    let hash = get_json(&coord.url("/v1/cluster")).expect("cluster")["ca_hash"].as_str().expect("hash").to_string();

    // Raw UDP garbage: not even QUIC.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..1200u32).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
        udp.send_to(&junk, coord.quic).expect("send");
    }

    let conn = connect(&coord, &hash).await;

    // A frame whose payload is not a valid archive.
    let mut s = ClientStream::open(&conn).await.expect("open");
    let mut frame = 64u32.to_le_bytes().to_vec();
    frame.extend((0..64u8).map(|b| b.wrapping_mul(97)));
    s.send_raw(&frame).await.expect("send");
    expect_closed(&mut s).await;

    // A length prefix far over the limit.
    let mut s = ClientStream::open(&conn).await.expect("open");
    s.send_raw(&u32::MAX.to_le_bytes()).await.expect("send");
    expect_closed(&mut s).await;

    // A frame cut short by the end of the stream.
    let mut s = ClientStream::open(&conn).await.expect("open");
    let mut frame = 1000u32.to_le_bytes().to_vec();
    frame.extend([1u8; 10]);
    s.send_raw(&frame).await.expect("send");
    s.finish();
    expect_closed(&mut s).await;

    // Another protocol version is refused with a clear reason.
    let mut s = ClientStream::open_with_version(&conn, 99).await.expect("open");
    match s.recv().await {
        Err(ProtocolError::Refused(msg)) => assert!(msg.contains("version 99"), "{msg}"),
        other => panic!("expected a version refusal, got {other:?}"),
    }
    // The same when the stream is split at once (as a stage link is): the receiving half checks the welcome.
    let (_sender, mut receiver) = ClientStream::open_with_version(&conn, 98).await.expect("open").split();
    match receiver.recv().await {
        Err(ProtocolError::Refused(msg)) => assert!(msg.contains("version 98"), "{msg}"),
        other => panic!("expected a version refusal on the split stream, got {other:?}"),
    }

    // Without a member certificate, nothing but a join is served.
    let mut s = ClientStream::open(&conn).await.expect("open");
    match s.call(&Request::Ping { seq: 1, payload: vec![1, 2, 3] }).await {
        Ok(Response::Refused { message, .. }) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The connection and the process are still fine.
    let mut s = ClientStream::open(&conn).await.expect("the connection survives bad streams");
    let join = shoal_protocol::JoinRequest {
        token_id: "zzzzzz".into(),
        token_secret: "x".into(),
        name: "n".into(),
        csr_der: vec![],
        gateway: false,
    };
    assert!(matches!(s.call(&Request::Join(join)).await, Ok(Response::Refused { .. })));

    tokio::task::block_in_place(|| {
        assert_eq!(get(&coord.url("/healthz"), None).map(|r| r.0), Some(200));
        wait_until(Duration::from_secs(5), "refusals counted", || {
            coord.metric("shoal_protocol_frames_refused_total{reason=\"malformed\"}") >= 1.0
                && coord.metric("shoal_protocol_frames_refused_total{reason=\"oversized\"}") >= 1.0
                && coord.metric("shoal_protocol_frames_refused_total{reason=\"truncated\"}") >= 1.0
                && coord.metric("shoal_protocol_frames_refused_total{reason=\"version\"}") >= 1.0
        });
    });
}
