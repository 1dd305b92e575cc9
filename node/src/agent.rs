//! The node agent: a ractor supervisor whose child, the control link, runs one session
//! with the coordinator. When the link fails the agent restarts it after a backoff
//! (exponential with jitter, reset once a session registers).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::Rng;
use shoal_protocol::metric_names as m;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::session::{self, SessionContext};

pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the agent reports about itself.
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    pub node_id: String,
    pub connected: bool,
    pub generation: Option<u64>,
    pub restarts: u64,
}

pub enum AgentMsg {
    /// The link registered incarnation `generation`.
    Registered {
        generation: u64,
    },
    /// Time to start a new link.
    Restart,
    Status(RpcReplyPort<AgentStatus>),
}

pub struct NodeAgent;

pub struct AgentState {
    ctx: Arc<SessionContext>,
    link: Option<ActorRef<LinkMsg>>,
    backoff: Duration,
    status: AgentStatus,
}

impl AgentState {
    fn next_delay(&mut self) -> Duration {
        let base = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

async fn spawn_link(myself: &ActorRef<AgentMsg>, state: &mut AgentState) -> Result<(), ActorProcessingErr> {
    let (link, _) =
        Actor::spawn_linked(None, ControlLink, (state.ctx.clone(), myself.clone()), myself.get_cell()).await?;
    state.link = Some(link);
    Ok(())
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = Arc<SessionContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = AgentState {
            status: AgentStatus { node_id: ctx.identity.node_id.clone(), ..Default::default() },
            ctx,
            link: None,
            backoff: BACKOFF_MIN,
        };
        spawn_link(&myself, &mut state).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::Registered { generation } => {
                state.backoff = BACKOFF_MIN;
                state.status.connected = true;
                state.status.generation = Some(generation);
            }
            AgentMsg::Restart => {
                if state.link.is_none() {
                    metrics::counter!(m::NODE_RECONNECTS).increment(1);
                    state.status.restarts += 1;
                    spawn_link(&myself, state).await?;
                }
            }
            AgentMsg::Status(reply) => {
                let _ = reply.send(state.status.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let why = match &event {
            SupervisionEvent::ActorFailed(_, err) => err.to_string(),
            SupervisionEvent::ActorTerminated(_, _, reason) => reason.clone().unwrap_or_else(|| "ended".into()),
            _ => return Ok(()),
        };
        state.link = None;
        state.status.connected = false;
        let delay = state.next_delay();
        warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "control link down; reconnecting");
        myself.send_after(delay, || AgentMsg::Restart);
        Ok(())
    }
}

pub enum LinkMsg {
    Ended(Result<(), String>),
}

/// Runs one session; fails (so the supervisor hears) when the session ends.
pub struct ControlLink;

pub struct LinkState {
    task: JoinHandle<()>,
}

impl Actor for ControlLink {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = (Arc<SessionContext>, ActorRef<AgentMsg>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (ctx, agent): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let task = tokio::spawn(async move {
            let result = session::run(ctx, |generation| {
                let _ = agent.cast(AgentMsg::Registered { generation });
            })
            .await;
            let _ = myself.cast(LinkMsg::Ended(result.map_err(|e| e.to_string())));
        });
        Ok(LinkState { task })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LinkMsg::Ended(Ok(())) => {
                info!("control session ended");
                myself.stop(Some("session ended".into()));
                Ok(())
            }
            LinkMsg::Ended(Err(e)) => Err(e.into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        Ok(())
    }
}
