//! A member that restarts at the same address, with the same key, resets its peers'
//! connections to its previous run at the first packet they send (a QUIC stateless reset),
//! instead of leaving them open until the idle timeout while everything sent on them is lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_protocol::quic::{self, ClientStream, ServerStream};
use shoal_protocol::tls::{ClusterCa, Identity, MemberRole, NODE_SERVER_NAME};
use shoal_protocol::Request;

fn listen(id: &Identity, addr: SocketAddr) -> Result<quinn::Endpoint, shoal_protocol::ProtocolError> {
    let endpoint = quic::server_endpoint_keyed(addr, id.server_config().expect("cfg"), &id.reset_secret())?;
    tokio::spawn(quic::serve(endpoint.clone(), |_conn, mut s: ServerStream| async move {
        while let Ok(Some(_)) = s.recv().await {}
    }));
    Ok(endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_resets_connections_to_its_previous_run() {
    shoal_protocol::install_crypto_provider();
    let ca = ClusterCa::generate().expect("ca");
    let server = ca.issue_with_new_key(MemberRole::Node, "restarts", &[]).expect("cert");
    let client = ca.issue_with_new_key(MemberRole::Node, "peer", &[]).expect("cert");
    let s_id = Identity::from_pem(&server.cert_pem, &server.key_pem, &ca.material.cert_pem).expect("id");
    let c_id = Identity::from_pem(&client.cert_pem, &client.key_pem, &ca.material.cert_pem).expect("id");

    // The first run lives on a runtime of its own, so that it can die the way a killed
    // process does: its tasks dropped unpolled, no CONNECTION_CLOSE sent.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let first_id = Identity::from_pem(&server.cert_pem, &server.key_pem, &ca.material.cert_pem).expect("id");
    let first = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let endpoint = rt.block_on(async {
            let e = listen(&first_id, "127.0.0.1:0".parse().expect("addr")).expect("bind");
            addr_tx.send(e.local_addr().expect("addr")).expect("send");
            let _ = die_rx.await;
            e
        });
        rt.shutdown_background();
        drop(endpoint);
    });
    let addr = addr_rx.recv().expect("first run's address");
    let ce = quic::client_endpoint(addr).expect("client");
    let conn = quic::connect(&ce, addr, c_id.client_config().expect("cfg"), NODE_SERVER_NAME).await.expect("connect");
    let mut s = ClientStream::open(&conn).await.expect("stream");
    s.send(&Request::Ping { seq: 1, payload: vec![7; 64] }).await.expect("sent to the first run");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let _ = die_tx.send(());
    first.join().expect("first run stopped");
    let started = Instant::now();
    let _second = loop {
        match listen(&s_id, addr) {
            Ok(e) => break e,
            Err(_) if started.elapsed() < Duration::from_secs(5) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("cannot listen again on {addr}: {e}"),
        }
    };

    // The peer writes on its old connection: the new run answers with a reset.
    let _ = s.send(&Request::Ping { seq: 1, payload: vec![7; 64] }).await;
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
    let reason = closed.expect("the old connection should be reset at once, not left to the 5 s idle timeout");
    assert!(matches!(reason, quinn::ConnectionError::Reset), "closed by a stateless reset, not {reason:?}");
}
