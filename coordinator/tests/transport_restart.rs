//! A raft message sent to a member that restarted a moment ago reaches its new run.
//!
//! The sender's connection still belongs to the member's previous run; the new run answers
//! its first packet with a stateless reset, and the transport sends the message again on a
//! new connection instead of losing it (a lost vote used to cost an election timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use shoal_coordinator::raft::transport::{AddressBook, Transport};
use shoal_protocol::quic::{self, ServerStream};
use shoal_protocol::tls::{ClusterCa, Identity, MemberRole};
use shoal_protocol::Request;
use tokio::sync::mpsc;

/// Listens as a coordinator and hands every raft message's `index` to `got`.
fn listen(id: &Identity, addr: SocketAddr, got: mpsc::UnboundedSender<u64>) -> quinn::Endpoint {
    let endpoint =
        quic::server_endpoint_keyed(addr, id.server_config().expect("cfg"), &id.reset_secret()).expect("bind");
    tokio::spawn(quic::serve(endpoint.clone(), move |_conn, mut s: ServerStream| {
        let got = got.clone();
        async move {
            while let Ok(Some(Request::Raft { message, .. })) = s.recv().await {
                let msg = Message::parse_from_bytes(&message).expect("a raft message");
                let _ = got.send(msg.index);
            }
        }
    }));
    endpoint
}

fn heartbeat(index: u64) -> Vec<Message> {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = 1;
    m.to = 2;
    m.index = index;
    vec![m]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_restarted_member_reaches_its_new_run() {
    shoal_protocol::install_crypto_provider();
    let ca = ClusterCa::generate().expect("ca");
    let member = ca.issue_with_new_key(MemberRole::Coordinator, "2", &[]).expect("cert");
    let sender = ca.issue_with_new_key(MemberRole::Coordinator, "1", &[]).expect("cert");
    let identity = || Identity::from_pem(&member.cert_pem, &member.key_pem, &ca.material.cert_pem).expect("id");
    let sender_id = Identity::from_pem(&sender.cert_pem, &sender.key_pem, &ca.material.cert_pem).expect("id");

    // The member's first run lives on a runtime of its own, so that it can die the way a
    // killed process does: tasks dropped unpolled, no CONNECTION_CLOSE sent.
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let first_identity = identity();
    let first = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let endpoint = rt.block_on(async {
            let e = listen(&first_identity, "127.0.0.1:0".parse().expect("addr"), first_tx);
            addr_tx.send(e.local_addr().expect("addr")).expect("send");
            let _ = die_rx.await;
            e
        });
        rt.shutdown_background();
        drop(endpoint);
    });
    let addr = addr_rx.recv().expect("first run's address");

    let book: AddressBook = Arc::new(std::sync::RwLock::new([(2, addr.to_string())].into_iter().collect()));
    let (reports_tx, _reports_rx) = mpsc::channel(64);
    let client = Arc::new(sender_id.client_config().expect("client config"));
    let mut transport = Transport::new(1, book, client, reports_tx, Default::default());
    transport.send(heartbeat(1));
    let got = tokio::time::timeout(Duration::from_secs(5), first_rx.recv()).await;
    assert_eq!(got.expect("the first run gets the first message"), Some(1));

    let _ = die_tx.send(());
    first.join().expect("first run stopped");
    let (second_tx, mut second_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    while std::net::UdpSocket::bind(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(5), "cannot listen again on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _second = listen(&identity(), addr, second_tx);

    // One message, on the connection to the previous run: the new run gets it (after the
    // earlier ones of the last moments, sent again with it; raft ignores duplicates).
    transport.send(heartbeat(2));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = Vec::new();
    while !seen.contains(&2) {
        match tokio::time::timeout_at(deadline.into(), second_rx.recv()).await {
            Ok(Some(index)) => seen.push(index),
            _ => {
                panic!("the message should reach the new run at once, not be lost on the old connection (got {seen:?})")
            }
        }
    }
}
