//! The index host with real shards on disk.

use super::*;
use shoal_protocol::tls::{ClusterCa, Identity, MemberRole};

fn doc(id: &str, text: &str) -> Pending {
    let document = IndexDocument { doc_id: id.into(), ..Default::default() };
    let chunk = IndexChunk { text: text.into(), start: 0, end: text.len() as u64, tokens: 2, vector: vec![0.5; 4] };
    Pending::Upsert(document, vec![chunk])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_journaled_before_a_crash_are_applied_when_the_copy_reopens() {
    shoal_protocol::install_crypto_provider();
    let ca = ClusterCa::generate().expect("ca");
    let c = ca.issue_with_new_key(MemberRole::Node, "n1", &[]).expect("cert");
    let id = Identity::from_pem(&c.cert_pem, &c.key_pem, &ca.material.cert_pem).expect("id");
    let pool = Arc::new(Pool::new(id.client_config().expect("cfg")).expect("pool"));
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("index").join("kb-0-a");
    // The previous process was copying from a peer (a stale document got in) and had
    // acknowledged three writes, journaled, when it was killed.
    {
        let mut shard = IndexShard::open(&dir, ShardConfig::new(4)).expect("open");
        let Pending::Upsert(d, c) = doc("stale", "half copied") else { unreachable!() };
        let c = c.into_iter().map(wire::chunk_from_wire).collect();
        shard.upsert_document(wire::document_from_wire(d), c).expect("upsert");
    }
    write_synced(&dir.join(COPYING_MARKER)).expect("marker");
    let mut j = Journal::new(&dir);
    for w in [doc("a", "alpha text"), doc("b", "beta text"), Pending::Delete("a".into())] {
        j.append(&w).expect("journal");
    }
    drop(j);

    let host = IndexHost::new(tmp.path(), pool);
    let a = IndexShardAssignment { id: "kb-0-a".into(), kb: "kb".into(), shard: 0, dimension: 4, peers: vec![] };
    host.reconcile(vec![a]);
    let mut phase = ReplicaPhase::Loading;
    for _ in 0..3000 {
        phase = host.reports()[0].phase;
        if phase != ReplicaPhase::Loading {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(phase, ReplicaPhase::Ready, "{:?}", host.reports());
    let docs: Vec<String> = host
        .export("kb-0-a")
        .await
        .map_err(|_| "export")
        .expect("export")
        .into_iter()
        .flatten()
        .map(|d| d.document.doc_id)
        .collect();
    assert_eq!(docs, ["b"], "the journal was applied in order; the half copy was dropped");
    assert!(!dir.join(JOURNAL_FILE).exists() && !dir.join(COPYING_MARKER).exists());
}
