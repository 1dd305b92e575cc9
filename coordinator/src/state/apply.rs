use super::{
    ClusterState, Command, Deployment, IndexShardPlacement, ModelRecord, NodeRecord, NodeState, Outcome, Placement,
    PlacementStage,
};

/// Whether `stage` is a stage of a model with `layers` layers (`None`: the version is unknown).
fn check_stage(stage: &PlacementStage, layers: Option<u32>) -> Result<(), String> {
    let Some(layers) = layers else {
        return Err("the deployment's model version is not registered".into());
    };
    let PlacementStage { chain, index, count, layer_start, layer_end } = *stage;
    if count < 2 || index >= count {
        return Err(format!("stage {index} of {count} (chain {chain}) is not a stage of a split model"));
    }
    if layer_start >= layer_end || layer_end > layers {
        return Err(format!(
            "layers {layer_start}..{layer_end} of stage {index} (chain {chain}) are not a range within the model's {layers} layers"
        ));
    }
    Ok(())
}

/// Applies one command. Pure and deterministic: same state and command, same result.
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Outcome {
    match cmd {
        Command::CreateToken(t) => {
            if state.tokens.contains_key(&t.id) {
                return Outcome::rejected("token id already exists");
            }
            state.tokens.insert(t.id.clone(), t.clone());
            Outcome::Applied
        }
        Command::RevokeToken { id } => match state.tokens.remove(id) {
            Some(_) => Outcome::Applied,
            None => Outcome::ignored("no such token"),
        },
        Command::PruneTokens { now_ms } => {
            state.tokens.retain(|_, t| t.expires_at_ms > *now_ms);
            Outcome::Applied
        }
        Command::AdmitNode { id, name, at_ms, token_id, secret_hash } => {
            match state.tokens.get(token_id) {
                Some(t) if t.secret_hash == *secret_hash => {
                    if t.expires_at_ms <= *at_ms {
                        return Outcome::rejected("expired token");
                    }
                }
                _ => return Outcome::rejected("invalid token"),
            }
            if state.nodes.contains_key(id) {
                return Outcome::rejected("node id already exists");
            }
            state.nodes.insert(
                id.clone(),
                NodeRecord {
                    id: id.clone(),
                    name: name.clone(),
                    address: String::new(),
                    capacity: Default::default(),
                    labels: Vec::new(),
                    metrics: String::new(),
                    state: NodeState::Joining,
                    generation: 0,
                    incarnation: 0,
                    mcp_stdio: false,
                    joined_at_ms: *at_ms,
                    state_changed_at_ms: *at_ms,
                },
            );
            Outcome::Applied
        }
        Command::NodeUp { id, name, address, capacity, labels, metrics, incarnation, mcp_stdio, at_ms } => {
            let Some(node) = state.nodes.get_mut(id) else {
                return Outcome::rejected("unknown node");
            };
            node.generation += 1;
            node.name = name.clone();
            node.address = address.clone();
            node.capacity = capacity.clone();
            node.labels = labels.clone();
            node.metrics = metrics.clone();
            node.mcp_stdio = *mcp_stdio;
            if node.state != NodeState::Ready {
                node.state_changed_at_ms = *at_ms;
            }
            node.state = NodeState::Ready;
            let generation = node.generation;
            let same_process = *incarnation != 0 && node.incarnation == *incarnation;
            node.incarnation = *incarnation;
            if same_process {
                // The same process reconnected: its replicas are still loaded; keep them.
                for p in state.placements.values_mut().filter(|p| p.node == *id) {
                    p.node_generation = generation;
                }
            } else {
                // A new process starts with no replicas: the old one's are gone.
                state.placements.retain(|_, p| p.node != *id);
            }
            // Index shards live on the node's disk and are reloaded by a new process too.
            for p in state.index_shards.values_mut().filter(|p| p.node == *id) {
                p.node_generation = generation;
            }
            Outcome::NodeUp { generation }
        }
        Command::NodeDead { id, generation, at_ms } => {
            let Some(node) = state.nodes.get_mut(id) else {
                return Outcome::ignored("unknown node");
            };
            if node.generation != *generation {
                return Outcome::ignored("stale generation");
            }
            if node.state != NodeState::Ready {
                return Outcome::ignored("not ready");
            }
            node.state = NodeState::Dead;
            node.state_changed_at_ms = *at_ms;
            // Its replicas and index shards died with it; they are placed elsewhere.
            state.placements.retain(|_, p| p.node != *id);
            state.index_shards.retain(|_, p| p.node != *id);
            Outcome::Applied
        }
        Command::AddApiKey(k) => {
            if state.api_keys.contains_key(&k.hash) {
                return Outcome::ignored("key already exists");
            }
            if state.api_keys.values().any(|o| o.id == k.id) {
                return Outcome::rejected(&format!("a key with id '{}' already exists", k.id));
            }
            state.api_keys.insert(k.hash.clone(), k.clone());
            Outcome::Applied
        }
        Command::RevokeApiKey { id } => {
            let Some(hash) = state.api_keys.values().find(|k| &k.id == id).map(|k| k.hash.clone()) else {
                return Outcome::rejected(&format!("no API key with id '{id}'"));
            };
            let admins = state.api_keys.values().filter(|k| k.scope == crate::state::Scope::Admin).count();
            if state.api_keys[&hash].scope == crate::state::Scope::Admin && admins == 1 {
                return Outcome::rejected("this is the last admin key: create another admin key first");
            }
            state.api_keys.remove(&hash);
            Outcome::Applied
        }
        Command::RegisterModel { name, version } => {
            let model = state
                .models
                .entry(name.clone())
                .or_insert_with(|| ModelRecord { name: name.clone(), versions: vec![] });
            if let Some(v) = model.versions.iter().find(|v| v.sha256 == version.sha256) {
                return Outcome::ModelVersion { version: v.version, existed: true };
            }
            let mut v = version.clone();
            v.version = model.versions.last().map(|l| l.version + 1).unwrap_or(1);
            let number = v.version;
            model.versions.push(v);
            Outcome::ModelVersion { version: number, existed: false }
        }
        Command::Deploy { name, model, version, replicas, shards, at_ms, force } => {
            let Some(record) = state.models.get(model) else {
                return Outcome::Rejected(format!(
                    "model '{model}' is not registered: give a source to register it (--source file://…, hf://…, builtin://echo)"
                ));
            };
            let chosen = if *version == 0 { record.latest() } else { record.version(*version) };
            let Some(chosen) = chosen else {
                return Outcome::Rejected(format!("model '{model}' has no version {version}"));
            };
            if let Err(why) = crate::planner::check_shards(chosen, *shards) {
                return Outcome::Rejected(why);
            }
            // A name clients use for one kind of work does not silently start doing another.
            if let Some(current) = state.deployed_version(name) {
                let embeds = |k: shoal_protocol::EngineKind| k == shoal_protocol::EngineKind::Embed;
                if embeds(current.kind()) != embeds(chosen.kind()) && !force {
                    return Outcome::Rejected(format!(
                        "'{name}' serves {}; the new version serves {}: delete the deployment first, or force the change (--force)",
                        current.kind().describe(),
                        chosen.kind().describe()
                    ));
                }
            }
            let number = chosen.version;
            match state.deployments.get_mut(name) {
                Some(d) => {
                    d.model = model.clone();
                    d.version = number;
                    d.replicas = *replicas;
                    d.shards = *shards;
                    d.updated_at_ms = *at_ms;
                }
                None => {
                    let d = Deployment {
                        name: name.clone(),
                        model: model.clone(),
                        version: number,
                        replicas: *replicas,
                        shards: *shards,
                        created_at_ms: *at_ms,
                        updated_at_ms: *at_ms,
                    };
                    state.deployments.insert(name.clone(), d);
                }
            }
            Outcome::ModelVersion { version: number, existed: true }
        }
        Command::DeleteDeployment { name } => {
            if state.deployments.remove(name).is_none() {
                return Outcome::Rejected(format!("no deployment named '{name}'"));
            }
            state.placements.retain(|_, p| p.deployment != *name);
            Outcome::Applied
        }
        Command::Place { deployment, node, node_generation, at_ms, stage } => {
            let Some(d) = state.deployments.get(deployment) else {
                return Outcome::ignored("no such deployment");
            };
            match state.nodes.get(node) {
                Some(n) if n.state == NodeState::Ready && n.generation == *node_generation => {}
                _ => return Outcome::ignored("node incarnation is not ready"),
            }
            if let Some(stage) = stage {
                let layers = state.models.get(&d.model).and_then(|m| m.version(d.version)).map(|v| v.layers);
                if let Err(why) = check_stage(stage, layers) {
                    return Outcome::Rejected(why);
                }
            }
            state.next_placement += 1;
            let id = format!("{}-{}", deployment, state.next_placement);
            let p = Placement {
                id: id.clone(),
                deployment: deployment.clone(),
                model: d.model.clone(),
                version: d.version,
                node: node.clone(),
                node_generation: *node_generation,
                phase: None,
                message: String::new(),
                placed_at_ms: *at_ms,
                changed_at_ms: *at_ms,
                stage: *stage,
            };
            state.placements.insert(id.clone(), p);
            Outcome::Placed { id }
        }
        Command::Unplace { id } => match state.placements.remove(id) {
            Some(_) => Outcome::Applied,
            None => Outcome::ignored("no such placement"),
        },
        Command::ReplicaStatus { id, node, node_generation, phase, message, at_ms } => {
            if let Some(copy) = state.index_shards.get_mut(id) {
                // Index-shard copies report through the same heartbeat field.
                if copy.node != *node || copy.node_generation != *node_generation {
                    return Outcome::ignored("stale generation");
                }
                copy.phase = Some(*phase);
                copy.message = message.clone();
                return Outcome::Applied;
            }
            let Some(p) = state.placements.get_mut(id) else {
                return Outcome::ignored("no such placement");
            };
            if p.node != *node || p.node_generation != *node_generation {
                return Outcome::ignored("stale generation");
            }
            p.phase = Some(*phase);
            p.message = message.clone();
            p.changed_at_ms = *at_ms;
            Outcome::Applied
        }
        Command::CreateKnowledgeBase(kb) => {
            if state.knowledge_bases.contains_key(&kb.name) {
                return Outcome::rejected("a knowledge base with this name exists");
            }
            if !kb.documents.is_empty() || kb.shards == 0 || kb.replicas == 0 {
                return Outcome::rejected("a new knowledge base has no documents and at least one shard and copy");
            }
            state.knowledge_bases.insert(kb.name.clone(), kb.clone());
            Outcome::Applied
        }
        Command::DeleteKnowledgeBase { name } => match state.knowledge_bases.remove(name) {
            Some(_) => {
                state.index_shards.retain(|_, p| p.kb != *name);
                Outcome::Applied
            }
            None => Outcome::rejected("no such knowledge base"),
        },
        Command::PutDocument { kb, document } => match state.knowledge_bases.get_mut(kb) {
            Some(k) => {
                k.documents.insert(document.id.clone(), document.clone());
                Outcome::Applied
            }
            None => Outcome::rejected("no such knowledge base"),
        },
        Command::DeleteDocument { kb, id } => match state.knowledge_bases.get_mut(kb) {
            Some(k) => match k.documents.remove(id) {
                Some(_) => Outcome::Applied,
                None => Outcome::rejected("no such document"),
            },
            None => Outcome::rejected("no such knowledge base"),
        },
        Command::PlaceIndexShard { kb, shard, node, node_generation, at_ms } => {
            let Some(k) = state.knowledge_bases.get(kb) else {
                return Outcome::rejected("no such knowledge base");
            };
            if *shard >= k.shards {
                return Outcome::rejected("no such shard");
            }
            match state.nodes.get(node) {
                Some(n) if n.state == NodeState::Ready && n.generation == *node_generation => {}
                _ => return Outcome::ignored("the node is not ready under that generation"),
            }
            if state.index_shards.values().any(|p| p.kb == *kb && p.shard == *shard && p.node == *node) {
                return Outcome::ignored("the node already holds that shard");
            }
            state.next_placement += 1;
            let id = format!("{kb}-s{shard}-{}", state.next_placement);
            state.index_shards.insert(
                id.clone(),
                IndexShardPlacement {
                    id: id.clone(),
                    kb: kb.clone(),
                    shard: *shard,
                    node: node.clone(),
                    node_generation: *node_generation,
                    phase: None,
                    message: String::new(),
                    placed_at_ms: *at_ms,
                },
            );
            Outcome::Placed { id }
        }
        Command::UnplaceIndexShard { id } => match state.index_shards.remove(id) {
            Some(_) => Outcome::Applied,
            None => Outcome::ignored("no such index shard"),
        },
        Command::PutGraph { name, definition, sha256, at_ms } => {
            super::graphs::put_version(&mut state.graphs, name, definition, sha256, *at_ms)
        }
        Command::DeleteGraph { name } => match state.graphs.remove(name) {
            Some(_) => Outcome::Applied,
            None => Outcome::rejected("no such graph"),
        },
        Command::StartRun(run) => super::graphs::start_run(&mut state.runs, &state.graphs, run),
        Command::FinishStep { run, step } => super::graphs::finish_step(&mut state.runs, run, step),
        Command::RecordToolCall { run, step, call } => {
            super::graphs::record_tool_call(&mut state.runs, run, step, call)
        }
        Command::ForgetStep { run, step, output_sha256 } => {
            super::graphs::forget_step(&mut state.runs, run, step, output_sha256)
        }
        Command::FinishRun { run, status, outputs, error, at_ms, keep_finished } => {
            super::graphs::finish_run(&mut state.runs, run, *status, outputs, error, *at_ms, *keep_finished)
        }
        Command::PruneRuns { keep, before_ms } => {
            super::graphs::prune(&mut state.runs, *keep, *before_ms);
            Outcome::Applied
        }
        Command::AddDatabase(db) => {
            if state.databases.contains_key(&db.name) {
                return Outcome::rejected("a database with that name exists");
            }
            state.databases.insert(db.name.clone(), db.clone());
            Outcome::Applied
        }
        Command::RemoveDatabase { name } => match state.databases.remove(name) {
            Some(_) => Outcome::Applied,
            None => Outcome::rejected("no such database"),
        },
        Command::Noop => Outcome::Applied,
        Command::AddMcpServer(server) => {
            if state.mcp_servers.contains_key(&server.name) {
                return Outcome::rejected("an MCP server with that name exists");
            }
            state.mcp_servers.insert(server.name.clone(), (**server).clone());
            Outcome::Applied
        }
        Command::RemoveMcpServer { name } => match state.mcp_servers.remove(name) {
            Some(_) => Outcome::Applied,
            None => Outcome::rejected("no such MCP server"),
        },
        Command::PutPrompt { name, definition, sha256, at_ms } => {
            super::graphs::put_version(&mut state.prompts, name, definition, sha256, *at_ms)
        }
        Command::DeletePrompt { name } => match state.prompts.remove(name) {
            Some(_) => Outcome::Applied,
            None => Outcome::rejected("no such prompt"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApiKeyRecord, Scope, TokenRecord};
    use proptest::prelude::*;

    fn token() -> TokenRecord {
        TokenRecord {
            id: "tok".into(),
            secret_hash: "h".into(),
            created_at_ms: 0,
            expires_at_ms: 100,
            description: String::new(),
        }
    }
    fn with_token() -> ClusterState {
        let mut s = ClusterState::default();
        apply(&mut s, &Command::CreateToken(token()));
        s
    }
    fn admit(id: &str) -> Command {
        Command::AdmitNode {
            id: id.into(),
            name: format!("name-{id}"),
            at_ms: 1,
            token_id: "tok".into(),
            secret_hash: "h".into(),
        }
    }
    fn up(id: &str, at: u64) -> Command {
        Command::NodeUp {
            id: id.into(),
            name: format!("name-{id}"),
            address: "127.0.0.1:1".into(),
            capacity: Default::default(),
            labels: vec![],
            metrics: String::new(),
            incarnation: at,
            mcp_stdio: false,
            at_ms: at,
        }
    }
    fn dead(id: &str, generation: u64) -> Command {
        Command::NodeDead { id: id.into(), generation, at_ms: 9 }
    }

    #[test]
    fn node_lifecycle_bumps_generation_and_fences_stale_deaths() {
        let mut s = with_token();
        assert_eq!(apply(&mut s, &up("a", 2)), Outcome::rejected("unknown node"));
        assert_eq!(apply(&mut s, &admit("a")), Outcome::Applied);
        assert_eq!(s.nodes["a"].state, NodeState::Joining);
        assert_eq!(apply(&mut s, &up("a", 2)), Outcome::NodeUp { generation: 1 });
        assert_eq!(apply(&mut s, &dead("a", 1)), Outcome::Applied);
        assert_eq!(s.nodes["a"].state, NodeState::Dead);
        assert_eq!(apply(&mut s, &up("a", 3)), Outcome::NodeUp { generation: 2 });
        // A death decided about the old incarnation must not kill the new one.
        assert_eq!(apply(&mut s, &dead("a", 1)), Outcome::ignored("stale generation"));
        assert_eq!(s.nodes["a"].state, NodeState::Ready);
    }

    #[test]
    fn admission_checks_the_token_at_apply_time() {
        let mut s = with_token();
        let bad = Command::AdmitNode {
            id: "x".into(),
            name: "x".into(),
            at_ms: 1,
            token_id: "tok".into(),
            secret_hash: "nope".into(),
        };
        assert_eq!(apply(&mut s, &bad), Outcome::rejected("invalid token"));
        let late = Command::AdmitNode {
            id: "x".into(),
            name: "x".into(),
            at_ms: 100,
            token_id: "tok".into(),
            secret_hash: "h".into(),
        };
        assert_eq!(apply(&mut s, &late), Outcome::rejected("expired token"));
        let unknown = Command::AdmitNode {
            id: "x".into(),
            name: "x".into(),
            at_ms: 1,
            token_id: "zzz".into(),
            secret_hash: "h".into(),
        };
        assert_eq!(apply(&mut s, &unknown), Outcome::rejected("invalid token"));
        assert!(s.nodes.is_empty());
        assert_eq!(apply(&mut s, &admit("x")), Outcome::Applied);
    }

    fn key(hash: &str, id: &str, scope: Scope) -> ApiKeyRecord {
        ApiKeyRecord {
            hash: hash.into(),
            id: id.into(),
            name: id.into(),
            scope,
            created_at_ms: 0,
            models: vec![],
            rate_per_s: 0,
            tokens_per_minute: 0,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn tokens_and_keys() {
        let mut s = ClusterState::default();
        let t = TokenRecord {
            id: "abc123".into(),
            secret_hash: "h".into(),
            created_at_ms: 0,
            expires_at_ms: 10,
            description: String::new(),
        };
        assert_eq!(apply(&mut s, &Command::CreateToken(t.clone())), Outcome::Applied);
        assert_eq!(apply(&mut s, &Command::CreateToken(t)), Outcome::rejected("token id already exists"));
        apply(&mut s, &Command::PruneTokens { now_ms: 10 });
        assert!(s.tokens.is_empty());
        let k = key("k", "admin-1", Scope::Admin);
        assert_eq!(apply(&mut s, &Command::AddApiKey(k.clone())), Outcome::Applied);
        assert_eq!(apply(&mut s, &Command::AddApiKey(k)), Outcome::ignored("key already exists"));
        assert_eq!(
            apply(&mut s, &Command::AddApiKey(key("other", "admin-1", Scope::User))),
            Outcome::rejected("a key with id 'admin-1' already exists")
        );
        let revoke = |id: &str| Command::RevokeApiKey { id: id.into() };
        assert_eq!(
            apply(&mut s, &revoke("admin-1")),
            Outcome::rejected("this is the last admin key: create another admin key first")
        );
        assert_eq!(apply(&mut s, &Command::AddApiKey(key("u", "user-1", Scope::User))), Outcome::Applied);
        assert_eq!(apply(&mut s, &revoke("user-1")), Outcome::Applied);
        assert!(!s.api_keys.contains_key("u"));
        assert_eq!(apply(&mut s, &revoke("user-1")), Outcome::rejected("no API key with id 'user-1'"));
        assert_eq!(apply(&mut s, &Command::AddApiKey(key("a2", "admin-2", Scope::Admin))), Outcome::Applied);
        assert_eq!(apply(&mut s, &revoke("admin-1")), Outcome::Applied);
    }

    fn deployed(layers: u32, capabilities: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        let version = crate::state::ModelVersion {
            version: 0,
            source: "file:///m.gguf".into(),
            sha256: "ab".into(),
            size: 1,
            format: crate::state::WeightFormat::Gguf,
            architecture: "llama".into(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            context_length: 2048,
            layers,
            hidden_size: 8,
            weight_bytes: 1,
            files: vec![],
            stored_by: 1,
            registered_at_ms: 0,
            sampling: Default::default(),
        };
        apply(&mut s, &Command::RegisterModel { name: "m".into(), version });
        s
    }

    fn deploy(shards: u32) -> Command {
        Command::Deploy { name: "d".into(), model: "m".into(), version: 0, replicas: 1, shards, at_ms: 3, force: false }
    }

    #[test]
    fn deploy_checks_and_updates_shards() {
        let mut s = deployed(30, &["chat"]);
        assert_eq!(apply(&mut s, &deploy(2)), Outcome::ModelVersion { version: 1, existed: true });
        assert_eq!(s.deployments["d"].shards, 2);
        assert_eq!(apply(&mut s, &deploy(0)), Outcome::ModelVersion { version: 1, existed: true });
        assert_eq!(s.deployments["d"].shards, 0);
        assert!(matches!(apply(&mut s, &deploy(31)), Outcome::Rejected(why) if why.contains("30 layers")));
        assert_eq!(s.deployments["d"].shards, 0, "a rejected change changes nothing");
        let mut e = deployed(12, &["embedding"]);
        assert_eq!(apply(&mut e, &deploy(1)), Outcome::ModelVersion { version: 1, existed: true });
        assert_eq!(
            apply(&mut e, &deploy(2)),
            Outcome::rejected("only text-generation models can be split into shards")
        );
    }

    #[test]
    fn a_deployment_does_not_silently_change_what_it_serves() {
        let mut s = deployed(30, &["chat"]);
        assert_eq!(apply(&mut s, &deploy(0)), Outcome::ModelVersion { version: 1, existed: true });
        // An embedding model registered under another name, deployed as `d`.
        let mut embedding = deployed(12, &["embedding"]).models["m"].versions[0].clone();
        embedding.sha256 = "cd".into();
        apply(&mut s, &Command::RegisterModel { name: "e".into(), version: embedding });
        let to_e = |force| Command::Deploy {
            name: "d".into(),
            model: "e".into(),
            version: 0,
            replicas: 1,
            shards: 0,
            at_ms: 4,
            force,
        };
        assert_eq!(
            apply(&mut s, &to_e(false)),
            Outcome::rejected(
                "'d' serves text generation (chat, completions); the new version serves embeddings: \
                 delete the deployment first, or force the change (--force)"
            )
        );
        assert_eq!(s.deployments["d"].model, "m", "nothing changed");
        assert_eq!(apply(&mut s, &to_e(true)), Outcome::ModelVersion { version: 1, existed: true });
        assert_eq!(s.deployments["d"].model, "e");
        let unknown = Command::Deploy {
            name: "d".into(),
            model: "nope".into(),
            version: 0,
            replicas: 1,
            shards: 0,
            at_ms: 5,
            force: false,
        };
        assert!(matches!(apply(&mut s, &unknown), Outcome::Rejected(why) if why.contains("--source")));
    }

    #[test]
    fn place_checks_the_stage() {
        let mut s = deployed(30, &["chat"]);
        apply(&mut s, &deploy(2));
        apply(&mut s, &Command::CreateToken(token()));
        apply(&mut s, &admit("a"));
        assert_eq!(apply(&mut s, &up("a", 2)), Outcome::NodeUp { generation: 1 });
        let place = |index, count, layer_start, layer_end| Command::Place {
            deployment: "d".into(),
            node: "a".into(),
            node_generation: 1,
            at_ms: 4,
            stage: Some(PlacementStage { chain: 0, index, count, layer_start, layer_end }),
        };
        assert!(matches!(apply(&mut s, &place(2, 2, 0, 15)), Outcome::Rejected(why) if why.contains("stage 2 of 2")));
        assert!(matches!(apply(&mut s, &place(0, 2, 15, 15)), Outcome::Rejected(why) if why.contains("30 layers")));
        assert!(matches!(apply(&mut s, &place(1, 2, 15, 31)), Outcome::Rejected(why) if why.contains("30 layers")));
        assert!(s.placements.is_empty());
        let Outcome::Placed { id } = apply(&mut s, &place(1, 2, 15, 30)) else { panic!("not placed") };
        assert_eq!(
            s.placements[&id].stage,
            Some(PlacementStage { chain: 0, index: 1, count: 2, layer_start: 15, layer_end: 30 })
        );
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let id = prop::sample::select(vec!["a", "b", "c"]);
        prop_oneof![
            id.clone().prop_map(admit),
            (id.clone(), 0u64..100).prop_map(|(i, t)| up(i, t)),
            (id.clone(), 0u64..6).prop_map(|(i, g)| dead(i, g)),
            (0u64..100).prop_map(|now_ms| Command::PruneTokens { now_ms }),
            Just(Command::Noop),
        ]
    }

    proptest! {
        /// Replaying the same log gives the same state; generations never go down; a node
        /// is only ever dead under the generation it was last registered with.
        #[test]
        fn apply_is_deterministic_and_generations_are_monotonic(cmds in prop::collection::vec(arb_command(), 0..60)) {
            let mut a = with_token();
            let mut b = with_token();
            let mut last_gen = std::collections::BTreeMap::new();
            for c in &cmds {
                let oa = apply(&mut a, c);
                let ob = apply(&mut b, c);
                prop_assert_eq!(oa, ob);
                for (id, n) in &a.nodes {
                    let prev = last_gen.insert(id.clone(), n.generation).unwrap_or(0);
                    prop_assert!(n.generation >= prev);
                    if n.state == NodeState::Ready { prop_assert!(n.generation >= 1); }
                }
            }
            prop_assert_eq!(a, b);
        }

        /// A state survives the rkyv round trip used for snapshots.
        #[test]
        fn state_round_trips_through_rkyv(cmds in prop::collection::vec(arb_command(), 0..40)) {
            let mut s = with_token();
            for c in &cmds { apply(&mut s, c); }
            let bytes = shoal_protocol::frame::to_payload(&s).expect("encode");
            let back: ClusterState = shoal_protocol::frame::decode(&bytes).expect("decode");
            prop_assert_eq!(back, s);
        }
    }
}
