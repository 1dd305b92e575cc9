//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*`: frames and archives from the
//! real encoders, a small GGUF written with the real SmolLM2 header's metadata, safetensors
//! headers from the real MiniLM file, tokenizer inputs, and an accepted body for every route.
//! Run by hand after a wire or API change: `./scripts/fuzz.sh --seeds`.
//! Also checks that every route's example body gets through its checks (the dispatch works).

use std::collections::HashMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use protobuf::Message as _;
use shoal_coordinator::raft::Proposal;
use shoal_coordinator::state::{Command, CoordinatorRecord, Outcome};
use shoal_coordinator::view::{LeaseView, SoftView, ViewChange};
use shoal_protocol::frame;
use shoal_protocol::*;

// The instrumented build needs libFuzzer's coverage callbacks linked in; this program is not
// a fuzz target, so it answers libFuzzer's entry point with nothing.
extern crate libfuzzer_sys;
#[no_mangle]
#[allow(improper_ctypes_definitions)]
pub extern "C" fn rust_fuzzer_test_input(_: &[u8]) -> i32 {
    0
}

const MAX_SEED_BYTES: usize = 64 * 1024;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    assert!(bytes.len() <= MAX_SEED_BYTES, "seed {name} is {} bytes", bytes.len());
    fs::create_dir_all(dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn sampling() -> SamplingSettings {
    SamplingSettings {
        max_tokens: 16,
        temperature: 0.7,
        top_p: 0.9,
        top_k: 40,
        seed: Some(7),
        presence_penalty: 0.0,
        frequency_penalty: 0.5,
        stop: vec!["\n".into()],
        constraint: None,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let raft_msg = {
        let mut m = raft::prelude::Message::default();
        m.from = 1;
        m.to = 2;
        m.term = 3;
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        m.write_to_bytes().expect("raft message")
    };
    let proposal =
        frame::to_payload(&Proposal::Command(Command::DeleteDeployment { name: "smollm2".into() })).expect("proposal");
    vec![
        ("ping", Request::Ping { seq: 1, payload: b"hello".to_vec() }),
        (
            "join",
            Request::Join(JoinRequest {
                token_id: "abcdef".into(),
                token_secret: "0123456789abcdef".into(),
                name: "node-1".into(),
                csr_der: vec![0x30, 0x82, 0x01, 0x0a],
                gateway: false,
            }),
        ),
        ("raft", Request::Raft { from: 1, message: raft_msg.clone() }),
        ("raft-snapshot", Request::RaftSnapshot { from: 1, message: raft_msg, total_bytes: 10 }),
        ("chunk", Request::Chunk { data: vec![1, 2, 3], last: true }),
        ("propose", Request::Propose { proposal: proposal.to_vec() }),
        ("watch", Request::Watch { from: 7 }),
        ("read-index", Request::ReadIndex),
        (
            "generate",
            Request::Generate(GenerateRequest {
                placement_id: "p-1".into(),
                prompt: Prompt::Chat(vec![ChatTurn::new("user", "Hi!")]),
                resume: vec![1, 2],
                sampling: sampling(),
            }),
        ),
        (
            "embed",
            Request::Embed {
                placement_id: "p-2".into(),
                inputs: vec!["a".into(), "bb".into()],
                purpose: EmbedAs::Query,
            },
        ),
        ("mcp-stdio", Request::McpStdio { server: "calc".into(), command: vec!["python3".into(), "calc.py".into()] }),
        ("fetch-artifact", Request::FetchArtifact { sha256: "ab".repeat(32), offset: 5 }),
        ("store-artifact", Request::StoreArtifact { sha256: "cd".repeat(32), size: 20_011 }),
        ("stage-release", Request::StageRelease { placement_id: "p-3".into(), sequences: vec![1, 9] }),
        (
            "embed-document",
            Request::EmbedDocument {
                placement_id: "p-2".into(),
                text: "One. Two.".into(),
                max_tokens: 64,
                overlap_tokens: 8,
            },
        ),
        ("index-delete", Request::IndexDelete { shard_id: "kb/0/a".into(), doc_id: "d".into() }),
        ("index-export", Request::IndexExport { shard_id: "kb/0/a".into() }),
        ("stdin-chunk", Request::Chunk { data: b"{\"jsonrpc\":\"2.0\"}\n".to_vec(), last: false }),
        (
            "index-upsert",
            Request::IndexUpsert { shard_id: "kb/0/a".into(), document: IndexDocument::default(), chunks: vec![] },
        ),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        ("welcome", Response::Welcome { version: PROTOCOL_VERSION }),
        ("view-state", Response::ViewState { index: 3, data: vec![0; 16], last: true }),
        (
            "view-changes",
            Response::ViewChanges { entries: vec![shoal_protocol::ViewEntry { index: 4, data: vec![1, 2] }] },
        ),
        ("view-soft", Response::ViewSoft { data: vec![0; 8] }),
        ("read-indexed", Response::ReadIndexed { index: 9 }),
        ("refused", Response::refused(RefusalCode::NotLeader, "not the leader")),
        ("redirect", Response::Redirect { leader_address: "127.0.0.1:7000".into() }),
        ("pong", Response::Pong { seq: 1, payload: b"hello".to_vec() }),
        ("raft-ack", Response::RaftAck),
        ("generated", Response::Generated { tokens: vec![1, 2, 3], text: "abc".into() }),
        ("done", Response::GenerationDone { finish: Finish::Stop, prompt_tokens: 3, completion_tokens: 2 }),
        ("embedded", Response::Embedded { vectors: vec![vec![0.5, -1.0], vec![2.0, 0.0]], tokens: 4 }),
        ("artifact", Response::Artifact { size: 100 }),
        ("artifact-chunk", Response::ArtifactChunk { data: vec![9; 16], last: false }),
        ("index-written", Response::IndexWritten { chunks: 2, unchanged: false, existed: true }),
        ("heartbeat-ack", Response::HeartbeatAck { generation: 2, seq: 3, assignments: vec![], index_shards: vec![] }),
        ("stdio-started", Response::StdioStarted { pid: 4242 }),
        ("stdio-out", Response::StdioOut { data: b"{\"jsonrpc\":\"2.0\",\"id\":1}\n".to_vec() }),
        ("stdio-exited", Response::StdioExited { status: "exit status 1".into(), stderr: "no config".into() }),
        ("artifact-wanted", Response::ArtifactWanted),
        ("artifact-held", Response::ArtifactHeld),
    ]
}

fn frames(root: &Path) {
    let dir = root.join("frame");
    let hello = Hello { version: PROTOCOL_VERSION, agent: "shoal-fuzz".into() };
    let hello_frame = frame::encode(&hello).expect("hello");
    write(&dir, "hello", &hello_frame);
    for (name, req) in requests() {
        let mut stream = hello_frame.clone();
        stream.extend(frame::encode(&req).expect("request"));
        write(&dir, &format!("request-{name}"), &frame::encode(&req).expect("request"));
        write(&dir, &format!("stream-{name}"), &stream);
    }
    for (name, resp) in responses() {
        write(&dir, &format!("response-{name}"), &frame::encode(&resp).expect("response"));
    }
}

fn messages(root: &Path) {
    let dir = root.join("messages");
    let tagged = |kind: u8, payload: &[u8]| {
        let mut v = vec![kind];
        v.extend_from_slice(payload);
        v
    };
    let hello = Hello { version: PROTOCOL_VERSION, agent: "shoal".into() };
    write(&dir, "hello", &tagged(0, &frame::to_payload(&hello).expect("hello")));
    for (name, req) in requests() {
        write(&dir, &format!("request-{name}"), &tagged(1, &frame::to_payload(&req).expect("request")));
    }
    for (name, resp) in responses() {
        write(&dir, &format!("response-{name}"), &tagged(2, &frame::to_payload(&resp).expect("response")));
    }
    let member = CoordinatorRecord { id: 2, quic: "127.0.0.1:7001".into(), http: "127.0.0.1:8001".into() };
    let proposals = [
        ("remove", Proposal::RemoveMember { id: 3 }),
        ("add", Proposal::AddMember(member.clone())),
        ("command", Proposal::Command(Command::DeleteDeployment { name: "m".into() })),
    ];
    for (name, p) in proposals {
        write(&dir, &format!("proposal-{name}"), &tagged(3, &frame::to_payload(&p).expect("proposal")));
    }
    for (name, o) in [("applied", Outcome::Applied), ("rejected", Outcome::Rejected("no".into()))] {
        write(&dir, &format!("outcome-{name}"), &tagged(4, &frame::to_payload(&o).expect("outcome")));
    }
    let cmd = Command::DeleteDeployment { name: "m".into() };
    write(&dir, "command-delete", &tagged(5, &frame::to_payload(&cmd).expect("command")));
    write(&dir, "coordinator-record", &tagged(6, &frame::to_payload(&member).expect("record")));
    let state = shoal_coordinator::raft::storage::StoredState::default();
    write(&dir, "stored-state", &tagged(7, &state.encode().expect("state")));
    let mut m = raft::prelude::Message::default();
    m.from = 1;
    m.to = 2;
    m.set_msg_type(raft::prelude::MessageType::MsgAppend);
    let mut e = raft::prelude::Entry::default();
    e.index = 4;
    e.term = 2;
    e.data = b"payload".to_vec().into();
    m.mut_entries().push(e.clone());
    write(&dir, "raft-append", &tagged(8, &m.write_to_bytes().expect("raft")));
    let mut cc = raft::prelude::ConfChange::default();
    cc.node_id = 2;
    cc.context = frame::to_payload(&member).expect("member").to_vec().into();
    write(&dir, "conf-change", &tagged(9, &cc.write_to_bytes().expect("conf change")));
    write(&dir, "entry", &tagged(10, &e.write_to_bytes().expect("entry")));
    let mut snap = raft::prelude::Snapshot::default();
    snap.mut_metadata().index = 9;
    snap.mut_metadata().term = 2;
    write(&dir, "snapshot", &tagged(11, &snap.write_to_bytes().expect("snapshot")));
    let changes = [
        ("command", ViewChange::Command(Command::DeleteDeployment { name: "m".into() })),
        ("coordinators", ViewChange::Coordinators(vec![member.clone()])),
        ("nothing", ViewChange::Nothing),
    ];
    for (name, c) in changes {
        write(&dir, &format!("view-change-{name}"), &tagged(12, &frame::to_payload(&c).expect("view change")));
    }
    let soft = SoftView {
        coordinator_id: 1,
        leader_id: 1,
        term: 2,
        commit: 9,
        applied: 9,
        role: "leader".into(),
        voters: vec![1, 2, 3],
        learners: vec![],
        first_index: 1,
        last_index: 9,
        coordinators: vec![(1, "127.0.0.1:7101".into(), "127.0.0.1:8081".into())],
        loads: vec![("p-1".into(), 3)],
        leases: vec![LeaseView {
            node: "n-1".into(),
            generation: 1,
            last_heartbeat_unix_ms: 5,
            load: Default::default(),
        }],
    };
    write(&dir, "soft-view", &tagged(13, &frame::to_payload(&soft).expect("soft view")));
    // A real raft log segment: the state frame a store starts with, then two flushes.
    let tmp = std::env::temp_dir().join(format!("shoal-seeds-wal-{}", std::process::id()));
    {
        use shoal_coordinator::raft::store::RaftStore;
        let mut store = shoal_coordinator::raft::wal_store::WalStorage::open(&tmp, &[1]).expect("wal store");
        let at = |index| raft::prelude::Entry { index, ..e.clone() };
        store.append(&[at(2)]).expect("append");
        store.flush().expect("flush");
        store.set_commit(2).expect("commit");
        store.append(&[at(3)]).expect("append");
        store.flush().expect("flush");
    }
    let segment = std::fs::read(tmp.join("wal").join("0000000000000000.wal")).expect("segment");
    let used = segment.iter().rposition(|b| *b != 0).map_or(0, |i| (i + 1).next_multiple_of(16));
    // Followed by one zero header: where the unused rest of a segment begins.
    write(&dir, "wal-segment", &tagged(14, &segment[..used + 16]));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A GGUF with the real SmolLM2 header's metadata (its long arrays cut short) and one tensor.
fn gguf(root: &Path, models: &Path) -> Option<()> {
    let dir = root.join("gguf");
    let path = models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut file = fs::File::open(&path).ok()?;
    let content = gguf_file::Content::read(&mut file).expect("read the real GGUF header");
    let mut metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| {
            let v = match v {
                gguf_file::Value::Array(a) => gguf_file::Value::Array(a.iter().take(24).cloned().collect()),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let tensor = QTensor::quantize(
        &Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
        GgmlDType::F32,
    )
    .expect("tensor");
    let md: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &[("token_embd.weight", &tensor)]).expect("write GGUF");
    let bytes = out.into_inner();
    write(&dir, "smollm2-small", &bytes);
    // The same without the tensor data (truncated), and with only the architecture keys.
    write(&dir, "smollm2-truncated", &bytes[..bytes.len() - 64]);
    let arch: Vec<(&str, &gguf_file::Value)> =
        md.iter().filter(|(k, _)| k.starts_with("general.") || k.starts_with("llama.")).copied().collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &arch, &[]).expect("write GGUF");
    write(&dir, "smollm2-arch-only", &out.into_inner());
    // A header declaring alignment 0 (candle's reader divides by it; found by this target).
    let zero = gguf_file::Value::U32(0);
    let mut aligned = arch.clone();
    aligned.push(("general.alignment", &zero));
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &aligned, &[]).expect("write GGUF");
    write(&dir, "alignment-zero", &out.into_inner());
    Some(())
}

/// Safetensors files: the real MiniLM header (data absent), the same with its tensors made
/// tiny and present, and a hand-made one.
fn safetensors(root: &Path, models: &Path) {
    let dir = root.join("safetensors");
    let tiny = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut one = (tiny.len() as u64).to_le_bytes().to_vec();
    one.extend_from_slice(tiny);
    one.extend_from_slice(&[0; 8]);
    write(&dir, "tiny", &one);
    let Ok(real) = fs::read(models.join("all-minilm-l6-v2/model.safetensors")) else { return };
    let n = u64::from_le_bytes(real[..8].try_into().expect("8 bytes")) as usize;
    write(&dir, "minilm-header", &real[..8 + n]);
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&real[8..8 + n]).expect("header");
    let mut small = serde_json::Map::new();
    let mut offset = 0u64;
    let mut names: Vec<&String> = header.keys().collect();
    names.sort();
    for name in names {
        let mut v = header[name].clone();
        if name != "__metadata__" {
            v["shape"] = serde_json::json!([1]);
            v["dtype"] = serde_json::json!("F32");
            v["data_offsets"] = serde_json::json!([offset, offset + 4]);
            offset += 4;
        }
        small.insert(name.clone(), v);
    }
    let text = serde_json::Value::Object(small).to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, offset as usize));
    write(&dir, "minilm-small", &bytes);
}

fn tokenizer(root: &Path) {
    let dir = root.join("tokenizer");
    let texts = [
        ("ascii", "Hello, world! How are you today?"),
        ("digits", "Call 0123456789 or 3.14159 at 12:30."),
        ("code", "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n"),
        ("unicode", "Grüße, 世界! Ελληνικά — emoji 🦀🎉 and \u{200d} joiners"),
        ("whitespace", "  two  spaces\tand\ttabs\r\n\n\nlines  "),
        ("special", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"),
    ];
    for (name, t) in texts {
        let mut v = vec![0u8];
        v.extend_from_slice(t.as_bytes());
        write(&dir, &format!("encode-{name}"), &v);
        let mut c = vec![2u8];
        c.extend_from_slice(format!("system\0Be brief.\0user\0{t}").as_bytes());
        write(&dir, &format!("chat-{name}"), &c);
    }
    // Ids: a few common ones, control tokens (0, 1, 2) and bytes of split characters.
    let mut ids = vec![1u8];
    for id in [0u16, 1, 2, 28, 253, 1000, 30000, 49151, 49152, 65535] {
        ids.extend_from_slice(&id.to_le_bytes());
    }
    write(&dir, "decode-ids", &ids);
}

fn http(root: &Path) {
    let dir = root.join("http_bodies");
    let routes = shoal_gateway::http::fuzzing::ROUTES;
    for (i, (route, body)) in shoal_gateway::http::fuzzing::example_bodies().into_iter().enumerate() {
        assert!(
            shoal_gateway::http::fuzzing::check_body(route, &body),
            "{} refused its example body",
            routes[route as usize]
        );
        let mut v = vec![route];
        v.extend_from_slice(&body);
        write(&dir, &format!("route-{route:02}-{i:02}"), &v);
    }
    // Bodies from docs/api.md-style requests that the checks refuse.
    let refused: &[(u8, &str)] = &[
        (0, r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#),
        (0, r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#),
        (1, r#"{"model":"m","prompt":["a","b"]}"#),
        (2, r#"{"model":"m","input":[]}"#),
        (4, r#"{"name":"..","embedding_model":"e","postgres_url":"mysql://u:p@h/db?password=x"}"#),
        (5, r#"{"id":"a","text":"x","content_base64":"eA=="}"#),
        (7, r#"{"query":"  ","top_k":0}"#),
        (8, r#"{"ttl_seconds":0}"#),
        (10, r#"{"name":"k","scope":"root","expires_in_seconds":18446744073709551615}"#),
    ];
    for (i, (route, body)) in refused.iter().enumerate() {
        let mut v = vec![*route];
        v.extend_from_slice(body.as_bytes());
        write(&dir, &format!("refused-{i:02}"), &v);
    }
    let html = b"\x03<html><head><title>T</title></head><body><h1>Head</h1><p>Para &amp; more</p></body></html>";
    write(&dir, "put-html", html);
    let md = b"\x02---\ntitle: x\n---\n# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n";
    write(&dir, "put-markdown", md);
}

fn main() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"));
    let models = std::env::var_os("SHOAL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")));
    frames(&root);
    messages(&root);
    if gguf(&root, &models).is_none() {
        eprintln!("no SmolLM2 GGUF under {}: GGUF seeds skipped", models.display());
    }
    safetensors(&root, &models);
    tokenizer(&root);
    http(&root);
    println!("seeds written under {}", root.display());
}
