//! Task graphs in the replicated state: definitions (versioned), the durable state of
//! their runs (every finished step's result), and the databases graphs may read.
//!
//! Definitions, inputs and outputs are held as JSON text: the coordinator stores and
//! orders them; the `shoal-graph` crate gives them meaning.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::Serialize;

use super::Outcome;

/// One version of a graph definition.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct GraphVersion {
    pub version: u32,
    /// The checked definition, as JSON.
    pub definition: String,
    /// SHA-256 of `definition`: applying the same definition again adds no version.
    pub sha256: String,
    pub created_at_ms: u64,
}

/// Prompt templates are kept as graphs are: a name and its versions' definitions (JSON).
pub type PromptRecord = GraphRecord;

/// A graph and its versions (oldest first).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct GraphRecord {
    pub name: String,
    pub versions: Vec<GraphVersion>,
}

impl GraphRecord {
    pub fn latest(&self) -> Option<&GraphVersion> {
        self.versions.last()
    }
    pub fn version(&self, v: u32) -> Option<&GraphVersion> {
        self.versions.iter().find(|g| g.version == v)
    }
}

/// Where a run is.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
    pub const ALL: [RunStatus; 4] = [RunStatus::Running, RunStatus::Succeeded, RunStatus::Failed, RunStatus::Cancelled];
}

/// How a step ended (see `shoal_graph::StepStatus`).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Succeeded,
    Skipped,
    Failed,
    Recovered,
}

/// A step's committed result: once here, the step never runs again in this run.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub id: String,
    pub kind: String,
    pub outcome: StepOutcome,
    /// The parameters it ran with (rendered prompts, the SQL, the URL…), as JSON.
    pub inputs: String,
    /// Its output as JSON; empty when the output is in the artifact store (`output_sha256`).
    pub output: String,
    /// SHA-256 of an output too large to keep inline (then `output` is empty).
    pub output_sha256: String,
    pub output_bytes: u64,
    /// The coordinator whose artifact store holds a large output.
    pub output_stored_by: u64,
    pub error: String,
    pub attempts: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// Where it ran: `coordinator 2`, `node n-3 (deployment qwen)`.
    pub ran_on: String,
}

/// A run of a graph version.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: String,
    pub graph: String,
    pub version: u32,
    /// The bound inputs, as JSON.
    pub inputs: String,
    pub status: RunStatus,
    pub created_at_ms: u64,
    pub finished_at_ms: u64,
    /// The outputs (JSON) once succeeded.
    pub outputs: String,
    pub error: String,
    /// Committed step results by step id.
    pub steps: BTreeMap<String, StepRecord>,
    /// The run whose results this one reused (`rerun from`), if any.
    pub rerun_of: String,
    /// The API key (public id) that started it.
    pub key_id: String,
    /// The tool calls of its `agent` steps by step id, in order, each committed when its
    /// result came in (a step being retried or resumed on a new leader reuses them).
    pub calls: BTreeMap<String, Vec<ToolCallRecord>>,
}

/// One completed tool call of an agent step.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ToolCallRecord {
    /// Its position among the step's calls (0, 1, …).
    pub index: u32,
    /// The model turn that made it (0-based); a turn may make several calls.
    pub turn: u32,
    /// The call's id as the model was shown it.
    pub id: String,
    /// The tool's name as the model was shown it.
    pub name: String,
    /// The arguments (JSON object).
    pub arguments: String,
    /// What the model was given back (a tool's text, JSON text, or an error message).
    pub result: String,
    /// Set when the call failed or was refused (then `result` says so to the model too).
    pub error: String,
    /// Tokens generated by the turn that made it (counted on the turn's first call).
    pub completion_tokens: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// What kind of database.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// A database registered for text-to-SQL. `location` is a file path or a connection URL
/// (which may hold a password: shown only redacted).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRecord {
    pub name: String,
    pub kind: DatabaseKind,
    pub location: String,
    pub description: String,
    pub created_at_ms: u64,
}

/// Adds a version of a graph's (or a prompt's) definition, unless it is the same as one
/// it has.
pub(super) fn put_version(
    graphs: &mut BTreeMap<String, GraphRecord>,
    name: &str,
    definition: &str,
    sha256: &str,
    at_ms: u64,
) -> Outcome {
    let g =
        graphs.entry(name.to_string()).or_insert_with(|| GraphRecord { name: name.to_string(), versions: Vec::new() });
    if let Some(v) = g.versions.iter().find(|v| v.sha256 == sha256) {
        return Outcome::ModelVersion { version: v.version, existed: true };
    }
    let version = g.latest().map_or(1, |v| v.version + 1);
    g.versions.push(GraphVersion {
        version,
        definition: definition.to_string(),
        sha256: sha256.to_string(),
        created_at_ms: at_ms,
    });
    Outcome::ModelVersion { version, existed: false }
}

pub(super) fn start_run(
    runs: &mut BTreeMap<String, RunRecord>,
    graphs: &BTreeMap<String, GraphRecord>,
    run: &RunRecord,
) -> Outcome {
    if runs.contains_key(&run.id) {
        return Outcome::rejected("run id already exists");
    }
    // Built-in graphs (version 0) live in the binary, not in the registry.
    if run.version != 0 && graphs.get(&run.graph).and_then(|g| g.version(run.version)).is_none() {
        return Outcome::rejected("no such graph version");
    }
    if run.status != RunStatus::Running {
        return Outcome::rejected("a run starts running");
    }
    runs.insert(run.id.clone(), run.clone());
    Outcome::Applied
}

pub(super) fn finish_step(runs: &mut BTreeMap<String, RunRecord>, run: &str, step: &StepRecord) -> Outcome {
    let Some(r) = runs.get_mut(run) else {
        return Outcome::ignored("no such run");
    };
    if r.status != RunStatus::Running {
        return Outcome::ignored("the run is not running");
    }
    if r.steps.contains_key(&step.id) {
        // First commit wins: a step's result is never replaced (a runner that lost its
        // leadership mid-step cannot overwrite the new leader's result).
        return Outcome::ignored("the step already finished");
    }
    r.steps.insert(step.id.clone(), step.clone());
    Outcome::Applied
}

/// Appends an agent step's completed call: only the next index of a step that has not
/// finished in a running run (a call committed twice is ignored the second time).
pub(super) fn record_tool_call(
    runs: &mut BTreeMap<String, RunRecord>,
    run: &str,
    step: &str,
    call: &ToolCallRecord,
) -> Outcome {
    let Some(r) = runs.get_mut(run) else {
        return Outcome::ignored("no such run");
    };
    if r.status != RunStatus::Running {
        return Outcome::ignored("the run is not running");
    }
    if r.steps.contains_key(step) {
        return Outcome::ignored("the step already finished");
    }
    let calls = r.calls.entry(step.to_string()).or_default();
    if call.index as usize != calls.len() {
        return Outcome::ignored("not the step's next call");
    }
    calls.push(call.clone());
    Outcome::Applied
}

/// Drops a step result whose large output is lost (fenced by its hash: only that result).
pub(super) fn forget_step(runs: &mut BTreeMap<String, RunRecord>, run: &str, step: &str, sha256: &str) -> Outcome {
    let Some(r) = runs.get_mut(run) else {
        return Outcome::ignored("no such run");
    };
    match r.steps.get(step) {
        Some(s) if r.status == RunStatus::Running && !s.output_sha256.is_empty() && s.output_sha256 == sha256 => {
            r.steps.remove(step);
            Outcome::Applied
        }
        _ => Outcome::ignored("not that result of a running run"),
    }
}

/// Ends a run, then keeps at most `keep_finished` finished runs (the oldest go first).
pub(super) fn finish_run(
    runs: &mut BTreeMap<String, RunRecord>,
    run: &str,
    status: RunStatus,
    outputs: &str,
    error: &str,
    at_ms: u64,
    keep_finished: u32,
) -> Outcome {
    let Some(r) = runs.get_mut(run) else {
        return Outcome::ignored("no such run");
    };
    if r.status != RunStatus::Running {
        return Outcome::ignored("the run already ended");
    }
    if status == RunStatus::Running {
        return Outcome::rejected("a run ends succeeded, failed or cancelled");
    }
    r.status = status;
    r.outputs = outputs.to_string();
    r.error = error.to_string();
    r.finished_at_ms = at_ms;
    prune(runs, keep_finished, 0);
    Outcome::Applied
}

/// Drops finished runs beyond the newest `keep` and those finished before `before_ms`.
pub(super) fn prune(runs: &mut BTreeMap<String, RunRecord>, keep: u32, before_ms: u64) {
    let mut finished: Vec<(u64, String)> =
        runs.values().filter(|r| r.status != RunStatus::Running).map(|r| (r.finished_at_ms, r.id.clone())).collect();
    finished.sort();
    let excess = finished.len().saturating_sub(keep as usize);
    for (i, (finished_at, id)) in finished.iter().enumerate() {
        if i < excess || *finished_at < before_ms {
            runs.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{apply, ClusterState, Command, Outcome};
    use super::*;

    fn run(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            graph: "g".into(),
            version: 1,
            inputs: "{}".into(),
            status: RunStatus::Running,
            created_at_ms: 1,
            finished_at_ms: 0,
            outputs: String::new(),
            error: String::new(),
            steps: BTreeMap::new(),
            rerun_of: String::new(),
            key_id: "k".into(),
            calls: BTreeMap::new(),
        }
    }

    fn call(index: u32) -> ToolCallRecord {
        ToolCallRecord {
            index,
            turn: 0,
            id: format!("call_{index}"),
            name: "add".into(),
            arguments: r#"{"a":1,"b":2}"#.into(),
            result: "3".into(),
            error: String::new(),
            completion_tokens: 9,
            started_at_ms: 1,
            finished_at_ms: 2,
        }
    }

    #[test]
    fn agent_calls_are_appended_in_order_once_and_only_while_the_step_runs() {
        let mut s = with_graph();
        assert_eq!(apply(&mut s, &Command::StartRun(Box::new(run("r1")))), Outcome::Applied);
        let rec = |i: u32| Command::RecordToolCall { run: "r1".into(), step: "agent".into(), call: Box::new(call(i)) };
        assert_eq!(apply(&mut s, &rec(0)), Outcome::Applied);
        assert_eq!(apply(&mut s, &rec(0)), Outcome::ignored("not the step's next call"), "committed twice");
        assert_eq!(apply(&mut s, &rec(2)), Outcome::ignored("not the step's next call"), "a gap");
        assert_eq!(apply(&mut s, &rec(1)), Outcome::Applied);
        assert_eq!(s.runs["r1"].calls["agent"].iter().map(|c| c.index).collect::<Vec<_>>(), vec![0, 1]);
        let done = Command::FinishStep { run: "r1".into(), step: Box::new(step("agent", "{}")) };
        assert_eq!(apply(&mut s, &done), Outcome::Applied);
        assert_eq!(apply(&mut s, &rec(2)), Outcome::ignored("the step already finished"));
        let other = Command::RecordToolCall { run: "nope".into(), step: "agent".into(), call: Box::new(call(0)) };
        assert_eq!(apply(&mut s, &other), Outcome::ignored("no such run"));
    }

    fn step(id: &str, output: &str) -> StepRecord {
        StepRecord {
            id: id.into(),
            kind: "template".into(),
            outcome: StepOutcome::Succeeded,
            inputs: String::new(),
            output: output.into(),
            output_sha256: String::new(),
            output_bytes: 0,
            output_stored_by: 0,
            error: String::new(),
            attempts: 1,
            started_at_ms: 1,
            finished_at_ms: 2,
            ran_on: "coordinator 1".into(),
        }
    }

    fn with_graph() -> ClusterState {
        let mut s = ClusterState::default();
        let put = Command::PutGraph { name: "g".into(), definition: "{}".into(), sha256: "a".into(), at_ms: 1 };
        assert_eq!(apply(&mut s, &put), Outcome::ModelVersion { version: 1, existed: false });
        assert_eq!(apply(&mut s, &put), Outcome::ModelVersion { version: 1, existed: true });
        let changed = Command::PutGraph { name: "g".into(), definition: "{ }".into(), sha256: "b".into(), at_ms: 2 };
        assert_eq!(apply(&mut s, &changed), Outcome::ModelVersion { version: 2, existed: false });
        s
    }

    #[test]
    fn a_committed_step_is_never_replaced_and_an_ended_run_takes_no_more() {
        let mut s = with_graph();
        assert_eq!(apply(&mut s, &Command::StartRun(Box::new(run("r1")))), Outcome::Applied);
        assert!(matches!(apply(&mut s, &Command::StartRun(Box::new(run("r1")))), Outcome::Rejected(_)));
        let mut unknown = run("r2");
        unknown.version = 9;
        assert!(matches!(apply(&mut s, &Command::StartRun(Box::new(unknown))), Outcome::Rejected(_)));
        let first = Command::FinishStep { run: "r1".into(), step: Box::new(step("a", "1")) };
        let second = Command::FinishStep { run: "r1".into(), step: Box::new(step("a", "2")) };
        assert_eq!(apply(&mut s, &first), Outcome::Applied);
        assert!(matches!(apply(&mut s, &second), Outcome::Ignored(_)));
        assert_eq!(s.runs["r1"].steps["a"].output, "1", "the first result stays");
        let cancel = Command::FinishRun {
            run: "r1".into(),
            status: RunStatus::Cancelled,
            outputs: String::new(),
            error: "x".into(),
            at_ms: 5,
            keep_finished: 10,
        };
        assert_eq!(apply(&mut s, &cancel), Outcome::Applied);
        let late = Command::FinishStep { run: "r1".into(), step: Box::new(step("b", "3")) };
        assert!(matches!(apply(&mut s, &late), Outcome::Ignored(_)), "a cancelled run takes no results");
        assert!(matches!(apply(&mut s, &cancel), Outcome::Ignored(_)));
    }

    #[test]
    fn finished_runs_are_kept_up_to_the_count_and_age() {
        let mut s = with_graph();
        for i in 0..5u64 {
            let id = format!("r{i}");
            apply(&mut s, &Command::StartRun(Box::new(run(&id))));
            let end = Command::FinishRun {
                run: id,
                status: RunStatus::Succeeded,
                outputs: "{}".into(),
                error: String::new(),
                at_ms: 100 + i,
                keep_finished: 3,
            };
            assert_eq!(apply(&mut s, &end), Outcome::Applied);
        }
        apply(&mut s, &Command::StartRun(Box::new(run("live"))));
        let ids: Vec<&String> = s.runs.keys().collect();
        assert_eq!(ids, ["live", "r2", "r3", "r4"], "the 3 newest finished runs and the running one");
        apply(&mut s, &Command::PruneRuns { keep: 10, before_ms: 104 });
        let ids: Vec<&String> = s.runs.keys().collect();
        assert_eq!(ids, ["live", "r4"], "older than the age limit go; running runs stay");
    }
}
