//! The models a node runs: one ractor actor per replica the coordinator assigned. A
//! replica's actor fetches the model's files into the node's content-addressed cache and
//! loads the weights in `pre_start`; once started it owns the engine (a decode thread or an
//! embedding batcher) until the coordinator takes the assignment away.

pub mod artifacts;
pub mod embed;
pub mod llm;
pub mod pipeline;
pub mod stage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use shoal_engine::{ConstraintSpec, Embedder, Llm, LlmOptions, SamplingParams};
use shoal_protocol::artifact::ArtifactStore;
use shoal_protocol::metric_names as m;
use shoal_protocol::pool::Pool;
use shoal_protocol::{Assignment, EngineKind, ReplicaPhase, ReplicaReport, SamplingSettings};
use tracing::{info, warn};

pub use embed::EmbedHandle;
pub use llm::LlmHandle;
pub use pipeline::NextHop;
pub use stage::StageHandle;

/// The engine's sampling settings for the wire's.
pub fn sampling_params(s: &SamplingSettings) -> SamplingParams {
    SamplingParams {
        max_tokens: s.max_tokens as usize,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k as usize,
        seed: s.seed,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        stop: s.stop.clone(),
        constraint: s
            .constraint
            .as_ref()
            .map(|c| ConstraintSpec { schema: c.schema.clone(), trigger: c.trigger.clone() }),
    }
}

/// A loaded engine.
#[derive(Clone)]
pub enum Engine {
    Generate(LlmHandle),
    Embed(EmbedHandle),
    /// A stage of a split model after the head (the head is a `Generate`).
    Stage(StageHandle),
    /// The built-in no-op model.
    Echo,
}

impl Engine {
    fn outstanding(&self) -> usize {
        match self {
            Engine::Generate(h) => h.outstanding(),
            Engine::Embed(h) => h.outstanding(),
            Engine::Stage(h) => h.outstanding(),
            Engine::Echo => 0,
        }
    }
    fn stop(&self) {
        match self {
            Engine::Generate(h) => h.stop(),
            Engine::Stage(h) => h.stop(),
            Engine::Embed(_) | Engine::Echo => {}
        }
    }
}

struct Slot {
    assignment: Assignment,
    phase: ReplicaPhase,
    message: String,
    engine: Option<Engine>,
    actor: Option<ActorRef<()>>,
    /// The next stage, for a stage of a split model (updated when it is re-placed).
    next: NextHop,
}

/// Every replica on this node.
pub struct ModelHost {
    pub store: ArtifactStore,
    models_dir: PathBuf,
    pool: Arc<Pool>,
    slots: Mutex<HashMap<String, Slot>>,
    /// How long one step of a split model may take from a stage to the end of its chain.
    pub stage_timeout: Duration,
    /// How this node's stages send activations onwards.
    pub stage_activations: shoal_protocol::pipeline::ActivationFormat,
    /// The index-shard copies of knowledge bases on this node.
    pub index: Arc<crate::index::IndexHost>,
    /// Artifact downloads in progress (one per hash).
    fetches: artifacts::Fetches,
    /// Set when the node shuts down: new sequences and embeddings are refused.
    draining: std::sync::atomic::AtomicBool,
}

impl ModelHost {
    pub fn new(
        data_dir: &std::path::Path,
        client: quinn::ClientConfig,
        stage_timeout: Duration,
        stage_activations: shoal_protocol::pipeline::ActivationFormat,
    ) -> Result<Arc<Self>, crate::NodeError> {
        let store = ArtifactStore::open(data_dir.join("artifacts"))
            .map_err(|e| crate::NodeError::io(data_dir.join("artifacts").display().to_string(), e))?;
        let pool = Arc::new(Pool::new(client).map_err(crate::NodeError::from)?);
        Ok(Arc::new(Self {
            store,
            models_dir: data_dir.join("models"),
            index: crate::index::IndexHost::new(data_dir, pool.clone()),
            pool,
            slots: Mutex::new(HashMap::new()),
            stage_timeout,
            stage_activations,
            fetches: artifacts::Fetches::default(),
            draining: Default::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the replicas in line with the coordinator's assignments: starts new ones,
    /// stops the ones no longer assigned.
    pub fn reconcile(self: &Arc<Self>, assignments: Vec<Assignment>) {
        let mut slots = self.lock();
        let wanted: Vec<String> = assignments.iter().map(|a| a.placement_id.clone()).collect();
        let gone: Vec<String> = slots.keys().filter(|id| !wanted.contains(id)).cloned().collect();
        for id in gone {
            if let Some(slot) = slots.remove(&id) {
                info!(placement = %id, "replica unassigned; stopping it");
                if let Some(e) = &slot.engine {
                    e.stop();
                }
                if let Some(a) = slot.actor {
                    a.stop(Some("unassigned".into()));
                }
            }
        }
        for a in assignments {
            if let Some(slot) = slots.get_mut(&a.placement_id) {
                let next = a.stage.as_ref().and_then(|s| s.next.clone());
                let mut current = slot.next.lock().unwrap_or_else(|p| p.into_inner());
                if *current != next {
                    info!(placement = %a.placement_id, next = ?next, "the next stage moved");
                    *current = next;
                }
                continue;
            }
            info!(placement = %a.placement_id, model = %a.model, version = a.version, "replica assigned; loading");
            let id = a.placement_id.clone();
            let next: NextHop = Arc::new(Mutex::new(a.stage.as_ref().and_then(|s| s.next.clone())));
            slots.insert(
                id.clone(),
                Slot {
                    assignment: a.clone(),
                    phase: ReplicaPhase::Loading,
                    message: "fetching model files".into(),
                    engine: None,
                    actor: None,
                    next: next.clone(),
                },
            );
            let host = self.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = Actor::spawn(None, ModelReplica, (host.clone(), a, next)).await;
                let mut slots = host.lock();
                match result {
                    Ok((actor, _)) => match slots.get_mut(&id) {
                        Some(slot) => {
                            slot.actor = Some(actor);
                            metrics::histogram!(m::NODE_MODEL_LOAD_SECONDS, "model" => slot.assignment.model.clone())
                                .record(started.elapsed().as_secs_f64());
                        }
                        None => actor.stop(Some("unassigned while loading".into())),
                    },
                    Err(e) => {
                        let why = match &e {
                            ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
                            other => other.to_string(),
                        };
                        warn!(placement = %id, error = %why, "replica failed to load");
                        if let Some(slot) = slots.get_mut(&id) {
                            slot.phase = ReplicaPhase::Failed;
                            slot.message = why;
                        }
                    }
                }
            });
        }
    }

    fn set_phase(&self, id: &str, phase: ReplicaPhase, message: &str, engine: Option<Engine>) {
        if let Some(slot) = self.lock().get_mut(id) {
            slot.phase = phase;
            slot.message = message.to_string();
            if engine.is_some() {
                slot.engine = engine;
            }
        }
    }

    /// What the next heartbeat tells the coordinator.
    pub fn reports(&self) -> Vec<ReplicaReport> {
        let slots = self.lock();
        let mut out: Vec<ReplicaReport> = slots
            .iter()
            .map(|(id, s)| ReplicaReport {
                placement_id: id.clone(),
                phase: s.phase,
                message: s.message.clone(),
                outstanding: s.engine.as_ref().map(|e| e.outstanding() as u32).unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.placement_id.cmp(&b.placement_id));
        out
    }

    /// Sequences and embedding requests in flight on this node.
    /// Stops taking new sequences and embeddings (they are refused as retryable, so the
    /// router sends them to another replica); what is running goes on.
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u32 {
        self.lock().values().filter_map(|s| s.engine.as_ref()).map(|e| e.outstanding() as u32).sum()
    }

    /// The engine of a ready replica.
    pub fn engine(&self, placement: &str) -> Option<Engine> {
        self.lock().get(placement).and_then(|s| s.engine.clone())
    }
}

/// One replica: weights are loaded in `pre_start`.
pub struct ModelReplica;

pub struct ReplicaState {
    host: Arc<ModelHost>,
    id: String,
}

impl Actor for ModelReplica {
    type Msg = ();
    type State = ReplicaState;
    type Arguments = (Arc<ModelHost>, Assignment, NextHop);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (host, a, next): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let id = a.placement_id.clone();
        let dir = artifacts::materialize(&host, &a).await?;
        host.set_phase(&id, ReplicaPhase::Loading, "loading weights", None);
        let model = a.model.clone();
        let engine = match (a.kind, &a.stage) {
            (EngineKind::Generate, None) => {
                let path = dir.join(a.files.first().map(|f| f.name.clone()).unwrap_or_default());
                let llm = tokio::task::spawn_blocking(move || Llm::load(&path, &LlmOptions::default())).await??;
                Engine::Generate(LlmHandle::start(Arc::new(llm), &model)?)
            }
            (EngineKind::Generate, Some(stage)) => {
                let path = dir.join(a.files.first().map(|f| f.name.clone()).unwrap_or_default());
                let opts = LlmOptions {
                    layers: Some(stage.layer_start as usize..stage.layer_end as usize),
                    ..Default::default()
                };
                let llm = Arc::new(tokio::task::spawn_blocking(move || Llm::load(&path, &opts)).await??);
                let link = pipeline::Link {
                    pool: host.pool.clone(),
                    next,
                    timeout: host.stage_timeout,
                    activations: host.stage_activations,
                    stages: stage.count,
                    runtime: tokio::runtime::Handle::current(),
                    channel: Default::default(),
                };
                if stage.index == 0 {
                    Engine::Generate(LlmHandle::start_head(llm, &model, link)?)
                } else {
                    Engine::Stage(StageHandle::start(llm, &model, stage.index, link)?)
                }
            }
            (EngineKind::Embed, _) => {
                let e = tokio::task::spawn_blocking(move || Embedder::load(&dir)).await??;
                Engine::Embed(EmbedHandle::start(Arc::new(e), &model))
            }
            (EngineKind::Echo, _) => Engine::Echo,
        };
        info!(placement = %id, model = %a.model, "replica ready");
        host.set_phase(&id, ReplicaPhase::Ready, "", Some(engine));
        Ok(ReplicaState { host, id })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(e) = state.host.engine(&state.id) {
            e.stop();
        }
        Ok(())
    }
}
