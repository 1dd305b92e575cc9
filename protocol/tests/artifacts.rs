//! Artifact transfer over real QUIC with mutual TLS: a good copy arrives verified, a
//! source whose bytes do not match the hash is rejected (nothing kept), and an interrupted
//! download resumes from its partial file. A copy sent to a member (`StoreArtifact`) is
//! kept only when it matches its hash; a sender that goes away leaves nothing behind.

use std::path::Path;
use std::sync::Arc;

use shoal_protocol::artifact::{hash_file, ArtifactStore};
use shoal_protocol::quic::{self, ClientStream, ServerStream};
use shoal_protocol::tls::{ClusterCa, Identity, MemberRole, NODE_SERVER_NAME};
use shoal_protocol::{Request, Response};

struct Pair {
    client: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// A member answering `FetchArtifact` from `store` and keeping what `StoreArtifact` sends it
/// there, and a connected client.
async fn serve(store: ArtifactStore) -> Pair {
    shoal_protocol::install_crypto_provider();
    let ca = ClusterCa::generate().expect("ca");
    let server = ca.issue_with_new_key(MemberRole::Node, "holder", &[]).expect("cert");
    let client = ca.issue_with_new_key(MemberRole::Node, "fetcher", &[]).expect("cert");
    let s_id = Identity::from_pem(&server.cert_pem, &server.key_pem, &ca.material.cert_pem).expect("id");
    let c_id = Identity::from_pem(&client.cert_pem, &client.key_pem, &ca.material.cert_pem).expect("id");
    let endpoint =
        quic::server_endpoint("127.0.0.1:0".parse().expect("addr"), s_id.server_config().expect("cfg")).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    let store = Arc::new(store);
    tokio::spawn(quic::serve(endpoint.clone(), move |_conn, mut s: ServerStream| {
        let store = store.clone();
        async move {
            match s.recv().await {
                Ok(Some(Request::FetchArtifact { sha256, offset })) => store.serve(&mut s, &sha256, offset).await,
                Ok(Some(Request::StoreArtifact { sha256, size })) => store.receive(&mut s, &sha256, size).await,
                _ => {}
            }
        }
    }));
    let ce = quic::client_endpoint(addr).expect("client");
    let conn = quic::connect(&ce, addr, c_id.client_config().expect("cfg"), NODE_SERVER_NAME).await.expect("connect");
    Pair { client: conn, _endpoints: (endpoint, ce) }
}

fn weights(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8).collect()
}

fn store_with(dir: &Path, bytes: &[u8]) -> (ArtifactStore, String) {
    std::fs::create_dir_all(dir).expect("dir");
    let src = dir.join("src.bin");
    std::fs::write(&src, bytes).expect("write");
    let store = ArtifactStore::open(dir.join("store")).expect("store");
    let (sha, _) = store.put_file(&src).expect("put");
    (store, sha)
}

#[tokio::test]
async fn artifacts_arrive_verified_lies_are_rejected_and_downloads_resume() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = weights(3 * (1 << 20) + 12345, 1);
    let (holder, sha) = store_with(&tmp.path().join("holder"), &data);
    let pair = serve(holder).await;
    let fetcher = ArtifactStore::open(tmp.path().join("fetcher")).expect("store");

    // A lying source: a file stored under the right name with other bytes of the same length.
    let liar_dir = tmp.path().join("liar");
    let liar = ArtifactStore::open(liar_dir.join("store")).expect("store");
    std::fs::write(liar.path_of(&sha), weights(data.len(), 2)).expect("write");
    let liar_pair = serve(liar).await;
    let mut s = ClientStream::open(&liar_pair.client).await.expect("open");
    let err = fetcher.fetch(&mut s, &sha, data.len() as u64, &|_, _| {}).await.expect_err("a lie");
    assert!(err.to_string().contains("discarded"), "{err}");
    assert!(!fetcher.has(&sha), "nothing kept from a lying source");
    assert!(!fetcher.dir().join(format!("{sha}.partial")).exists(), "the partial copy was deleted");

    // An interrupted download: the first MiB is already here; the rest comes from offset 1 MiB.
    std::fs::write(fetcher.dir().join(format!("{sha}.partial")), &data[..1 << 20]).expect("partial");
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    let mut seen = Vec::new();
    let progress = std::sync::Mutex::new(&mut seen);
    let path = fetcher
        .fetch(&mut s, &sha, data.len() as u64, &|got, _| progress.lock().expect("p").push(got))
        .await
        .expect("fetch");
    assert_eq!(hash_file(&path).expect("hash").0, sha);
    assert_eq!(std::fs::read(&path).expect("read"), data);
    let first = *seen.first().expect("progress reported");
    assert!(first > 1 << 20 && first <= 2 << 20, "resumed after the first MiB (first progress at {first})");

    // An artifact the source does not have is refused; so is a malformed hash.
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    let missing = "a".repeat(64);
    let err = fetcher.fetch(&mut s, &missing, 10, &|_, _| {}).await.expect_err("missing");
    assert!(err.to_string().contains("no artifact"), "{err}");
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    assert!(fetcher.fetch(&mut s, "../../etc/passwd", 10, &|_, _| {}).await.is_err());
}

#[tokio::test]
async fn sent_copies_are_kept_only_when_they_match_their_hash() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = weights(2 * (1 << 20) + 777, 3);
    let (sender, sha) = store_with(&tmp.path().join("sender"), &data);
    let keeper = ArtifactStore::open(tmp.path().join("keeper")).expect("store");
    let pair = serve(keeper.clone()).await;
    let leftovers = || {
        std::fs::read_dir(keeper.dir())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".incoming"))
            .count()
    };

    // A good copy: held, byte for byte; sending it again is answered at once.
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    sender.push(&mut s, &sha).await.expect("push");
    assert!(keeper.has(&sha));
    assert_eq!(std::fs::read(keeper.path_of(&sha)).expect("read"), data);
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    sender.push(&mut s, &sha).await.expect("held already");

    // A sender whose file does not match the name it sends: refused, nothing kept.
    let liar = ArtifactStore::open(tmp.path().join("liar")).expect("store");
    let other = weights(5000, 4);
    let claimed = "b".repeat(64);
    std::fs::write(liar.path_of(&claimed), &other).expect("write");
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    let err = liar.push(&mut s, &claimed).await.expect_err("a lie");
    assert!(err.to_string().contains("discarded"), "{err}");
    assert!(!keeper.has(&claimed));
    assert_eq!(leftovers(), 0);

    // A malformed hash and an oversized announcement are refused before any byte.
    for (sha256, size, why) in
        [("../../etc/passwd".to_string(), 10, "not a sha256"), ("c".repeat(64), u64::MAX, "over the")]
    {
        let mut s = ClientStream::open(&pair.client).await.expect("open");
        match s.call(&Request::StoreArtifact { sha256, size }).await.expect("answer") {
            Response::Refused { message, .. } => assert!(message.contains(why), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    // More bytes than announced: refused, nothing kept.
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    let announced = Request::StoreArtifact { sha256: "d".repeat(64), size: 4 };
    assert_eq!(s.call(&announced).await.expect("answer"), Response::ArtifactWanted);
    s.send(&Request::Chunk { data: vec![1; 8], last: true }).await.expect("send");
    match s.recv().await.expect("answer") {
        Response::Refused { message, .. } => assert!(message.contains("longer than announced"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A sender that goes away half-way leaves no partial copy behind.
    let mut s = ClientStream::open(&pair.client).await.expect("open");
    let announced = Request::StoreArtifact { sha256: "e".repeat(64), size: 1 << 20 };
    assert_eq!(s.call(&announced).await.expect("answer"), Response::ArtifactWanted);
    s.send(&Request::Chunk { data: vec![7; 1000], last: false }).await.expect("send");
    s.finish();
    drop(s);
    let began = std::time::Instant::now();
    while leftovers() > 0 && began.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(leftovers(), 0, "the half-received copy was removed");
    assert!(!keeper.has(&"e".repeat(64)));
}
