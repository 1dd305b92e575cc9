//! Knowledge bases: checking a new base against the deployed models, and the pure plan that
//! keeps `replicas` copies of every index shard of the built-in bases on distinct ready nodes.

use std::collections::BTreeMap;

use shoal_protocol::EngineKind;

use crate::state::{ClusterState, Command, IndexBackend, KnowledgeBase, NodeState};

/// The most index shards one knowledge base may have.
pub const MAX_SHARDS: u32 = 64;
/// The most copies of one shard.
pub const MAX_REPLICAS: u32 = 5;

/// What an operator asks for when creating a knowledge base.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeBaseRequest {
    pub name: String,
    /// The embedding deployment (e.g. `all-minilm-l6-v2`).
    pub embedding_model: String,
    #[serde(default = "one")]
    pub shards: u32,
    #[serde(default = "two")]
    pub replicas: u32,
    #[serde(default = "chunk_tokens")]
    pub chunk_tokens: u32,
    #[serde(default = "chunk_overlap")]
    pub chunk_overlap: u32,
    /// `postgres://…` to keep the index in PostgreSQL with pgvector instead of the nodes.
    #[serde(default)]
    pub postgres_url: Option<String>,
    #[serde(default)]
    pub description: String,
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn chunk_tokens() -> u32 {
    256
}
fn chunk_overlap() -> u32 {
    32
}

/// Checks a request against the state and turns it into the base to create.
pub fn check_request(state: &ClusterState, req: KnowledgeBaseRequest, at_ms: u64) -> Result<KnowledgeBase, String> {
    let name = req.name.trim();
    // The same rule as deployment names ('.' and '..' are not names).
    crate::names::check_name("knowledge base", name)?;
    if state.knowledge_bases.contains_key(name) {
        return Err(format!("a knowledge base named '{name}' already exists"));
    }
    let Some(version) = state.deployed_version(&req.embedding_model) else {
        return Err(format!("no deployment named '{}' (deploy an embedding model first)", req.embedding_model));
    };
    if version.kind() != EngineKind::Embed {
        return Err(format!("'{}' is not an embedding model", req.embedding_model));
    }
    if req.shards == 0 || req.shards > MAX_SHARDS {
        return Err(format!("shards must be between 1 and {MAX_SHARDS}"));
    }
    if req.replicas == 0 || req.replicas > MAX_REPLICAS {
        return Err(format!("replicas must be between 1 and {MAX_REPLICAS}"));
    }
    if !(16..=8192).contains(&req.chunk_tokens) || req.chunk_overlap >= req.chunk_tokens {
        return Err("chunk_tokens must be 16-8192 and chunk_overlap smaller than chunk_tokens".into());
    }
    let backend = match req.postgres_url {
        None => IndexBackend::Builtin,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            IndexBackend::Postgres { url }
        }
        Some(url) => return Err(format!("postgres_url '{}' must start with postgres://", redact(&url))),
    };
    Ok(KnowledgeBase {
        name: name.to_string(),
        embedding: req.embedding_model,
        dimension: version.hidden_size,
        backend,
        shards: req.shards,
        replicas: req.replicas,
        chunk_tokens: req.chunk_tokens,
        chunk_overlap: req.chunk_overlap,
        description: req.description,
        created_at_ms: at_ms,
        documents: BTreeMap::new(),
    })
}

/// A connection URL without its passwords (in the user part and in any `…password=`
/// query parameter), for showing.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &base[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &base[..s], &base[at + 1..])
        }
        _ => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// How far a knowledge base is from taking documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Copies on ready nodes that report ready, per shard (the built-in index only).
    pub ready_copies: Vec<u32>,
    /// Copies each shard should have.
    pub wanted: u32,
    /// Ready nodes (fewer than `wanted` means the base stays degraded until more join).
    pub ready_nodes: u32,
    /// Why a document cannot be added now (None: it can).
    pub blocker: Option<String>,
}

impl Readiness {
    /// `pending` (cannot take documents yet), `degraded` (can, with fewer copies than
    /// wanted) or `ready`.
    pub fn status(&self) -> &'static str {
        if self.blocker.is_some() {
            "pending"
        } else if self.ready_copies.iter().any(|&c| c < self.wanted) {
            "degraded"
        } else {
            "ready"
        }
    }
}

/// Whether `kb` can take documents now, and how many copies of each shard are ready.
pub fn readiness(state: &ClusterState, kb: &KnowledgeBase) -> Readiness {
    let ready_nodes = state.nodes.values().filter(|n| n.state == NodeState::Ready).count() as u32;
    let builtin = kb.backend == IndexBackend::Builtin;
    let ready_copies: Vec<u32> = (0..kb.shards)
        .map(|shard| {
            if !builtin {
                return kb.replicas;
            }
            state
                .index_shards
                .values()
                .filter(|p| p.kb == kb.name && p.shard == shard)
                .filter(|p| p.phase == Some(shoal_protocol::ReplicaPhase::Ready))
                .filter(|p| {
                    state
                        .nodes
                        .get(&p.node)
                        .is_some_and(|n| n.state == NodeState::Ready && n.generation == p.node_generation)
                })
                .count() as u32
        })
        .collect();
    let blocker = if state.entry_points(&kb.embedding).is_empty() {
        Some(format!(
            "the embedding model '{}' has no ready replica yet (it is loading, or no node has room for it)",
            kb.embedding
        ))
    } else if let Some(shard) = ready_copies.iter().position(|&c| c == 0) {
        let placed = state.index_shards.values().filter(|p| p.kb == kb.name && p.shard == shard as u32).count();
        Some(if ready_nodes == 0 {
            format!("shard {shard} of '{}' has no copy yet: no node is ready (are nodes joined?)", kb.name)
        } else if placed == 0 {
            format!("shard {shard} of '{}' has no copy placed yet", kb.name)
        } else {
            format!("shard {shard} of '{}' has {placed} copies placed, none ready yet (still opening)", kb.name)
        })
    } else {
        // A copy its node has not heard of yet would miss writes (they need two copies).
        state
            .index_shards
            .values()
            .find(|p| {
                p.kb == kb.name
                    && p.phase.is_none()
                    && state.nodes.get(&p.node).is_some_and(|n| n.state == NodeState::Ready)
            })
            .map(|p| format!("shard {} of '{}' has a copy its node has not opened yet", p.shard, kb.name))
    };
    Readiness { ready_copies, wanted: kb.replicas, ready_nodes, blocker }
}

/// Commands that bring the index-shard copies closer to what the built-in bases need:
/// `replicas` copies of each shard on distinct ready nodes (the least loaded first), copies
/// of deleted bases or on nodes no longer ready removed. Deterministic.
pub fn plan(state: &ClusterState, at_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    let ready: Vec<(&str, u64)> =
        state.nodes.values().filter(|n| n.state == NodeState::Ready).map(|n| (n.id.as_str(), n.generation)).collect();
    // Copies per node, to spread shards.
    let mut load: BTreeMap<&str, usize> = ready.iter().map(|(id, _)| (*id, 0)).collect();
    for p in state.index_shards.values() {
        let live = ready.iter().any(|(id, g)| *id == p.node && *g == p.node_generation);
        let wanted =
            state.knowledge_bases.get(&p.kb).is_some_and(|k| k.backend == IndexBackend::Builtin && p.shard < k.shards);
        // A failed copy (it could not open its files, or copy from a peer) is replaced by a
        // fresh one that rebuilds from a ready copy, when there is one to rebuild from (a
        // failed only copy stays, so its files are never removed).
        let failed = p.phase == Some(shoal_protocol::ReplicaPhase::Failed)
            && state.index_shards.values().any(|q| {
                q.kb == p.kb
                    && q.shard == p.shard
                    && q.id != p.id
                    && q.phase == Some(shoal_protocol::ReplicaPhase::Ready)
                    && ready.iter().any(|(id, g)| *id == q.node && *g == q.node_generation)
            });
        if !live || !wanted || failed {
            out.push(Command::UnplaceIndexShard { id: p.id.clone() });
        } else if let Some(l) = load.get_mut(p.node.as_str()) {
            *l += 1;
        }
    }
    for kb in state.knowledge_bases.values().filter(|k| k.backend == IndexBackend::Builtin) {
        for shard in 0..kb.shards {
            let holders: Vec<&str> = state
                .index_shards
                .values()
                .filter(|p| p.kb == kb.name && p.shard == shard)
                .filter(|p| ready.iter().any(|(id, g)| *id == p.node && *g == p.node_generation))
                .map(|p| p.node.as_str())
                .collect();
            let missing = (kb.replicas as usize).saturating_sub(holders.len());
            let mut candidates: Vec<(&str, u64)> =
                ready.iter().copied().filter(|(id, _)| !holders.contains(id)).collect();
            candidates.sort_by_key(|(id, _)| (load.get(id).copied().unwrap_or(0), *id));
            for (id, generation) in candidates.into_iter().take(missing) {
                out.push(Command::PlaceIndexShard {
                    kb: kb.name.clone(),
                    shard,
                    node: id.to_string(),
                    node_generation: generation,
                    at_ms,
                });
                *load.entry(id).or_insert(0) += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apply, Deployment, ModelRecord, Outcome, WeightFormat};

    fn state(nodes: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for id in nodes {
            s.nodes.insert(id.to_string(), crate::scheduler::tests::node(id, 8));
        }
        let mut v = crate::planner::tests::version(90 << 20, 6);
        v.format = WeightFormat::Safetensors;
        v.architecture = "bert".into();
        v.capabilities = vec!["embedding".into()];
        v.hidden_size = 384;
        s.models.insert("e".into(), ModelRecord { name: "e".into(), versions: vec![v] });
        s.deployments.insert(
            "e".into(),
            Deployment {
                name: "e".into(),
                model: "e".into(),
                version: 1,
                replicas: 1,
                shards: 0,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
        );
        s
    }

    fn request(name: &str, shards: u32) -> KnowledgeBaseRequest {
        serde_json::from_value(serde_json::json!({"name": name, "embedding_model": "e", "shards": shards}))
            .expect("request")
    }

    fn converge(s: &mut ClusterState) {
        for _ in 0..10 {
            let cmds = plan(s, 5);
            if cmds.is_empty() {
                return;
            }
            for c in cmds {
                apply(s, &c);
            }
        }
        panic!("the index-shard plan did not converge");
    }

    fn holders(s: &ClusterState, shard: u32) -> Vec<String> {
        let mut v: Vec<String> = s.index_shards.values().filter(|p| p.shard == shard).map(|p| p.node.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn requests_are_checked_against_the_deployed_models() {
        let s = state(&["a"]);
        let kb = check_request(&s, request("docs", 2), 1).expect("valid");
        assert_eq!((kb.dimension, kb.shards, kb.replicas, kb.chunk_tokens), (384, 2, 2, 256));
        let err = |r: Result<KnowledgeBase, String>| r.err().unwrap_or_default();
        let mut bad = request("docs", 1);
        bad.embedding_model = "nope".into();
        assert!(err(check_request(&s, bad, 1)).contains("no deployment named 'nope'"));
        assert!(err(check_request(&s, request("docs", 0), 1)).contains("shards"));
        for name in ["no spaces", ".", "..", ".hidden", "a/b"] {
            assert!(err(check_request(&s, request(name, 1), 1)).contains("knowledge base name"), "{name}");
        }
        let mut bad = request("docs", 1);
        bad.chunk_overlap = 300;
        assert!(err(check_request(&s, bad, 1)).contains("chunk_overlap"));
        let mut bad = request("docs", 1);
        bad.postgres_url = Some("mysql://x".into());
        assert!(err(check_request(&s, bad, 1)).contains("postgres://"));
        let mut s = s;
        let kb = check_request(&s, request("docs", 1), 1).expect("valid");
        apply(&mut s, &Command::CreateKnowledgeBase(kb));
        assert!(err(check_request(&s, request("docs", 1), 1)).contains("already exists"));
    }

    #[test]
    fn two_copies_of_every_shard_on_distinct_nodes_and_a_lost_copy_moves() {
        let mut s = state(&["a", "b", "c"]);
        let kb = check_request(&s, request("docs", 2), 1).expect("valid");
        assert_eq!(apply(&mut s, &Command::CreateKnowledgeBase(kb)), Outcome::Applied);
        converge(&mut s);
        for shard in 0..2 {
            assert_eq!(holders(&s, shard).len(), 2, "shard {shard}: {:?}", holders(&s, shard));
        }
        assert_eq!(s.index_shards.len(), 4);
        let lost = holders(&s, 0)[0].clone();
        let gen = s.nodes[&lost].generation;
        apply(&mut s, &Command::NodeDead { id: lost.clone(), generation: gen, at_ms: 9 });
        converge(&mut s);
        for shard in 0..2 {
            let h = holders(&s, shard);
            assert_eq!(h.len(), 2, "shard {shard} has two copies again: {h:?}");
            assert!(!h.contains(&lost));
        }
        apply(&mut s, &Command::DeleteKnowledgeBase { name: "docs".into() });
        assert!(s.index_shards.is_empty());
    }

    /// Copies report like replicas; a failed copy is replaced only while a ready copy of its
    /// shard exists to rebuild from; assignments name the ready peers.
    #[test]
    fn copies_report_and_a_failed_copy_is_rebuilt_from_a_ready_one() {
        use shoal_protocol::{ReplicaPhase, ReplicaReport};
        let mut s = state(&["a", "b", "c"]);
        let kb = check_request(&s, request("docs", 1), 1).expect("valid");
        apply(&mut s, &Command::CreateKnowledgeBase(kb));
        converge(&mut s);
        let copies: Vec<(String, String)> = s.index_shards.values().map(|p| (p.id.clone(), p.node.clone())).collect();
        assert_eq!(copies.len(), 2);
        let report = |s: &mut ClusterState, i: usize, phase: ReplicaPhase| {
            let (id, node) = &copies[i];
            let g = s.nodes[node].generation;
            let r = ReplicaReport { placement_id: id.clone(), phase, message: "why".into(), outstanding: 0 };
            for c in crate::assign::status_changes(s, node, g, &[r], 7) {
                assert_eq!(apply(s, &c), Outcome::Applied);
            }
        };
        // Nothing is ready: the new copies have no peers, and a failed only copy stays put.
        let (id0, node0) = &copies[0];
        let g0 = s.nodes[node0].generation;
        assert!(crate::assign::index_assignments_for(&s, node0, g0).iter().all(|a| a.peers.is_empty()));
        report(&mut s, 0, ReplicaPhase::Failed);
        assert!(plan(&s, 9).is_empty(), "no ready copy to rebuild from: the failed one is kept");
        // Once the other copy is ready, the failed one is replaced, and the new one may copy from it.
        report(&mut s, 1, ReplicaPhase::Ready);
        let (id1, node1) = &copies[1];
        let a = crate::assign::index_assignments_for(&s, node0, g0);
        assert_eq!(a[0].peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id1.as_str()]);
        assert_eq!(a[0].dimension, 384);
        assert!(plan(&s, 9).contains(&Command::UnplaceIndexShard { id: id0.clone() }));
        converge(&mut s);
        let now: Vec<&str> = s.index_shards.values().map(|p| p.id.as_str()).collect();
        assert_eq!(now.len(), 2);
        assert!(!now.contains(&id0.as_str()) && now.contains(&id1.as_str()), "{now:?}");
        let fresh = s.index_shards.values().find(|p| p.id != *id1).expect("replacement");
        assert_ne!(fresh.node, *node1, "copies stay on distinct nodes");
        let g = s.nodes[&fresh.node].generation;
        let a = crate::assign::index_assignments_for(&s, &fresh.node, g);
        assert_eq!(a[0].peers[0].node, *node1, "the replacement rebuilds from the ready copy");
    }

    #[test]
    fn postgres_bases_have_no_shards_and_urls_are_redacted() {
        let mut s = state(&["a", "b"]);
        let mut req = request("pg", 1);
        req.postgres_url = Some("postgres://shoal:secret@127.0.0.1:5432/kb".into());
        let kb = check_request(&s, req, 1).expect("valid");
        apply(&mut s, &Command::CreateKnowledgeBase(kb));
        converge(&mut s);
        assert!(s.index_shards.is_empty());
        assert_eq!(redact("postgres://shoal:secret@127.0.0.1:5432/kb"), "postgres://shoal:***@127.0.0.1:5432/kb");
        assert_eq!(
            redact("postgres://h/kb?user=u&password=s3cret&sslmode=disable&sslpassword=x"),
            "postgres://h/kb?user=u&password=***&sslmode=disable&sslpassword=***"
        );
        assert_eq!(redact("postgres://u:p@h/kb?PASSWORD=q"), "postgres://u:***@h/kb?PASSWORD=***");
    }

    #[test]
    fn readiness_names_what_is_missing_and_counts_copies() {
        use shoal_protocol::ReplicaPhase;
        let mut s = state(&["a", "b"]);
        let kb = check_request(&s, request("docs", 1), 1).expect("valid");
        apply(&mut s, &Command::CreateKnowledgeBase(kb.clone()));
        let r = readiness(&s, &kb);
        assert_eq!(r.status(), "pending");
        assert!(r.blocker.as_deref().unwrap_or_default().contains("embedding model 'e' has no ready replica"));
        s.placements.insert(
            "e-1".into(),
            crate::state::Placement {
                id: "e-1".into(),
                deployment: "e".into(),
                model: "e".into(),
                version: 1,
                node: "a".into(),
                node_generation: s.nodes["a"].generation,
                phase: Some(ReplicaPhase::Ready),
                message: String::new(),
                placed_at_ms: 0,
                changed_at_ms: 0,
                stage: None,
            },
        );
        let r = readiness(&s, &kb);
        assert_eq!(r.blocker.as_deref(), Some("shard 0 of 'docs' has no copy placed yet"));
        converge(&mut s);
        assert!(readiness(&s, &kb).blocker.unwrap_or_default().contains("2 copies placed, none ready yet"));
        let ids: Vec<String> = s.index_shards.keys().cloned().collect();
        s.index_shards.get_mut(&ids[0]).expect("copy").phase = Some(ReplicaPhase::Ready);
        assert!(readiness(&s, &kb).blocker.unwrap_or_default().contains("a copy its node has not opened yet"));
        s.index_shards.get_mut(&ids[1]).expect("copy").phase = Some(ReplicaPhase::Loading);
        let r = readiness(&s, &kb);
        assert_eq!((r.status(), r.ready_copies.clone(), r.wanted, r.ready_nodes), ("degraded", vec![1], 2, 2));
        s.index_shards.get_mut(&ids[1]).expect("copy").phase = Some(ReplicaPhase::Ready);
        assert_eq!(readiness(&s, &kb).status(), "ready");
    }
}
