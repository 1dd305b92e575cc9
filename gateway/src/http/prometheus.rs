//! `GET /v1/prometheus/targets`: Prometheus HTTP service discovery — every coordinator's
//! gateway (its `/metrics` carries the coordinator's, the gateway's and, in `shoal up`, the
//! embedded node's series) and every node that serves its own metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth::require;
use super::routes::known_coordinators;
use super::{ApiError, GatewayState};
use crate::state::{ClusterState, NodeState, Scope};

/// The target groups for a cluster: pure, from the coordinators and the state.
pub fn target_groups(coordinators: &std::collections::BTreeMap<u64, (String, String)>, state: &ClusterState) -> Value {
    let mut out = Vec::new();
    for (id, (_, http)) in coordinators {
        out.push(json!({
            "targets": [http],
            "labels": {"job": "shoal", "shoal_role": "coordinator", "shoal_coordinator": id.to_string()},
        }));
    }
    for n in state.nodes.values().filter(|n| !n.metrics.is_empty() && n.state != NodeState::Joining) {
        out.push(json!({
            "targets": [n.metrics],
            "labels": {"job": "shoal", "shoal_role": "node", "shoal_node": n.name, "shoal_node_id": n.id},
        }));
    }
    Value::Array(out)
}

pub async fn targets(State(gw): State<Arc<GatewayState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require(&headers, &gw, Scope::User)?;
    let coordinators = known_coordinators(&gw);
    let state = gw.cluster.state().read().unwrap_or_else(|p| p.into_inner());
    Ok(Json(target_groups(&coordinators, &state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    #[test]
    fn coordinators_and_nodes_that_serve_metrics_are_targets() {
        let mut state = ClusterState::default();
        let node = |id: &str, metrics: &str, st: NodeState| NodeRecord {
            id: id.into(),
            name: format!("name-{id}"),
            address: "127.0.0.1:7200".into(),
            capacity: Default::default(),
            labels: vec![],
            metrics: metrics.into(),
            state: st,
            generation: 1,
            incarnation: 1,
            mcp_stdio: false,
            joined_at_ms: 0,
            state_changed_at_ms: 0,
        };
        state.nodes.insert("a".into(), node("a", "10.0.0.1:9100", NodeState::Ready));
        state.nodes.insert("b".into(), node("b", "", NodeState::Ready));
        state.nodes.insert("c".into(), node("c", "10.0.0.3:9100", NodeState::Dead));
        let coords = [(1u64, ("q1".to_string(), "10.0.0.9:8080".to_string()))].into_iter().collect();
        let groups = target_groups(&coords, &state);
        let targets: Vec<&str> =
            groups.as_array().expect("list").iter().map(|g| g["targets"][0].as_str().expect("t")).collect();
        // A dead node stays a target: its absence from the scrape is what the alert sees.
        assert_eq!(targets, ["10.0.0.9:8080", "10.0.0.1:9100", "10.0.0.3:9100"]);
        assert_eq!(groups[1]["labels"]["shoal_node"], "name-a");
        assert_eq!(groups[0]["labels"]["shoal_role"], "coordinator");
    }
}
