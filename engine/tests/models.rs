//! Tests against the real model files (fetched by ./scripts/fetch-models.sh).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use shoal_engine::{
    inspect, Batcher, Capability, ChatMessage, ConstraintSpec, Embedder, Event, FinishReason, KvCache, Llm, LlmOptions,
    ModelFormat, SamplingParams, StageInput, StageOutput,
};

fn models_dir() -> PathBuf {
    match std::env::var_os("SHOAL_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models"),
    }
}

fn model_path(rel: &str) -> PathBuf {
    let p = models_dir().join(rel);
    assert!(
        p.exists(),
        "model file {} is missing: run ./scripts/fetch-models.sh (or set SHOAL_MODELS_DIR)",
        p.display()
    );
    p
}

fn gguf_path() -> PathBuf {
    model_path("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn minilm_path() -> PathBuf {
    model_path("all-minilm-l6-v2")
}

fn llm() -> Arc<Llm> {
    static LLM: OnceLock<Arc<Llm>> = OnceLock::new();
    LLM.get_or_init(|| Arc::new(Llm::load(&gguf_path(), &LlmOptions::default()).expect("load SmolLM2"))).clone()
}

fn embedder() -> &'static Embedder {
    static EMB: OnceLock<Embedder> = OnceLock::new();
    EMB.get_or_init(|| Embedder::load(&minilm_path()).expect("load MiniLM"))
}

fn chat_prompt(llm: &Llm, user: &str) -> Vec<u32> {
    let text = llm.render_chat(&[ChatMessage::new("user", user)]).expect("render chat");
    llm.encode(&text).expect("encode")
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

fn apply(events: Vec<Event>, out: &mut HashMap<u64, Outcome>) {
    for e in events {
        match e {
            Event::Token { id, token, text } => {
                let o = out.entry(id).or_default();
                assert!(o.reason.is_none(), "token after finish");
                o.tokens.push(token);
                o.text.push_str(&text);
            }
            Event::Finished { id, reason, prompt_tokens, completion_tokens } => {
                let o = out.entry(id).or_default();
                o.reason = Some(reason);
                o.prompt_tokens = prompt_tokens;
                o.completion_tokens = completion_tokens;
            }
            Event::Failed { id, message } => panic!("sequence {id} failed: {message}"),
        }
    }
}

fn run_to_end(b: &mut Batcher, out: &mut HashMap<u64, Outcome>) {
    let mut guard = 0;
    while !b.is_idle() {
        apply(b.step().expect("step"), out);
        guard += 1;
        assert!(guard < 10_000, "batcher never finished");
    }
}

fn generate_alone(prompt: &[u32], resume: &[u32], params: SamplingParams) -> Outcome {
    let mut b = Batcher::new(llm(), 8);
    b.admit(1, prompt.to_vec(), resume.to_vec(), params).expect("admit");
    let mut out = HashMap::new();
    run_to_end(&mut b, &mut out);
    out.remove(&1).expect("outcome")
}

const PARIS: &str = "What is the capital of France? Answer briefly.";

#[test]
fn tokenizer_matches_the_model() {
    let llm = llm();
    let ids = llm.encode("What is the capital of France?").expect("encode");
    let pieces: Vec<String> = ids.iter().map(|&i| llm.decode(&[i]).expect("decode")).collect();
    assert_eq!(pieces, ["What", " is", " the", " capital", " of", " France", "?"]);
    assert_eq!(llm.decode(&ids).expect("decode"), "What is the capital of France?");
    // Digits are split one by one (SmolLM2's pre-tokenizer) and special tokens map to their ids.
    let ids = llm.encode("<|im_start|>user\n2024<|im_end|>").expect("encode");
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().expect("last"), 2);
    assert_eq!(ids.len(), 1 + 2 + 4 + 1, "{ids:?}");
    assert_eq!(llm.eos_tokens()[0], 2);
    assert_eq!(llm.context_length(), 8192);
    let text = llm.render_chat(&[ChatMessage::new("user", "Hi")]).expect("render");
    assert!(text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{text:?}");
}

#[test]
fn greedy_paris_answer_through_batcher() {
    let llm = llm();
    let prompt = chat_prompt(&llm, PARIS);
    let o = generate_alone(&prompt, &[], SamplingParams::greedy(64));
    assert_eq!(o.text, "The capital of France is Paris.");
    assert_eq!(o.reason, Some(FinishReason::Stop));
    assert_eq!(o.prompt_tokens, prompt.len());
    assert_eq!(o.completion_tokens, o.tokens.len());
    assert_eq!(*o.tokens.last().expect("eos"), 2);
}

fn four_prompts() -> Vec<Vec<u32>> {
    let llm = llm();
    [
        "What is the capital of France? Answer briefly.",
        "Write a haiku about autumn leaves.",
        "List three primary colors.",
        "Explain in one sentence what a CPU does.",
    ]
    .iter()
    .map(|p| chat_prompt(&llm, p))
    .collect()
}

#[test]
fn batched_decoding_equals_decoding_alone() {
    let prompts = four_prompts();
    let alone: Vec<Outcome> = prompts.iter().map(|p| generate_alone(p, &[], SamplingParams::greedy(24))).collect();
    let mut b = Batcher::new(llm(), 8);
    for (i, p) in prompts.iter().enumerate() {
        b.admit(i as u64, p.clone(), vec![], SamplingParams::greedy(24)).expect("admit");
    }
    assert_eq!(b.running(), 4);
    let mut out = HashMap::new();
    run_to_end(&mut b, &mut out);
    for (i, a) in alone.iter().enumerate() {
        assert_eq!(&out[&(i as u64)], a, "sequence {i}");
    }
}

#[test]
fn prompts_started_from_the_prefix_cache_give_the_same_tokens() {
    // Chat prompts sharing a long system message, as agents send them turn after turn.
    let llm = llm();
    let system = "You are a careful assistant for a travel agency. Answer in one short sentence, \
                  and never invent prices or dates.";
    let prompts: Vec<Vec<u32>> = ["Where is Lisbon?", "Name a city in Peru.", "Where is Lisbon?"]
        .iter()
        .map(|q| {
            let text =
                llm.render_chat(&[ChatMessage::new("system", system), ChatMessage::new("user", *q)]).expect("render");
            llm.encode(&text).expect("encode")
        })
        .collect();
    let alone: Vec<Outcome> = prompts.iter().map(|p| generate_alone(p, &[], SamplingParams::greedy(16))).collect();
    let mut b = Batcher::new(llm.clone(), 8).with_prefix_cache(64 << 20);
    for (i, p) in prompts.iter().enumerate() {
        b.admit(i as u64, p.clone(), vec![], SamplingParams::greedy(16)).expect("admit");
        let mut out = HashMap::new();
        run_to_end(&mut b, &mut out);
        assert_eq!(out[&(i as u64)], alone[i], "prompt {i}");
    }
    let (prompts_held, bytes) = b.prefix_cache_usage();
    assert_eq!(prompts_held, 2, "the repeated prompt is not stored twice");
    assert!(bytes > 0);
}

#[test]
fn constrained_generation_follows_the_schema() {
    // SmolLM2 left alone does not answer in JSON; constrained, greedy decoding gives a value
    // that parses and satisfies the schema, and the sequence ends right after it.
    let llm = llm();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"enum": ["France", "Spain"]},
            "population_millions": {"type": "number"}},
        "required": ["city", "country", "population_millions"],
    });
    let prompt = chat_prompt(&llm, PARIS);
    let mut params = SamplingParams::greedy(96);
    params.constraint = Some(ConstraintSpec { schema: schema.to_string(), trigger: String::new() });
    let out = generate_alone(&prompt, &[], params.clone());
    assert_eq!(out.reason, Some(FinishReason::Stop), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.text).expect("JSON");
    assert!(v["city"].as_str().is_some_and(|c| c.chars().count() <= 20), "{v}");
    assert!(["France", "Spain"].contains(&v["country"].as_str().unwrap_or("")), "{v}");
    assert!(v["population_millions"].is_number(), "{v}");
    // The same with resumed tokens (failover replays what was generated): the same answer.
    let half = out.tokens.len() / 2;
    let resumed = generate_alone(&prompt, &out.tokens[..half], params);
    assert_eq!(resumed.tokens, out.tokens[half..], "resuming continues the constrained answer");
    // A schema the engine cannot enforce is refused at admission.
    let mut bad = SamplingParams::greedy(8);
    bad.constraint =
        Some(ConstraintSpec { schema: r#"{"type":"string","format":"uri"}"#.into(), trigger: String::new() });
    let err = Batcher::new(llm, 1).admit(1, prompt, vec![], bad).expect_err("refused").to_string();
    assert!(err.contains("format"), "{err}");
}

#[test]
fn chunked_prefill_gives_the_same_tokens() {
    // A row budget smaller than the prompts: prompts are prefilled over several passes while
    // the others decode, and every sequence still gets exactly its tokens.
    let prompts = four_prompts();
    let alone: Vec<Outcome> = prompts.iter().map(|p| generate_alone(p, &[], SamplingParams::greedy(12))).collect();
    let mut b = Batcher::new(llm(), 8).with_max_rows(7);
    for (i, p) in prompts.iter().enumerate() {
        assert!(p.len() > 7, "prompt {i} must need several chunks");
        b.admit(i as u64, p.clone(), vec![], SamplingParams::greedy(12)).expect("admit");
    }
    let (_, first) = b.forward();
    let first = first.expect("a step");
    assert_eq!(first.rows.iter().map(|r| r.rows).sum::<usize>(), 7, "{:?}", first.rows);
    assert!(!first.rows[0].sample, "the first chunk of a prompt samples nothing");
    let mut b = Batcher::new(llm(), 8).with_max_rows(7);
    for (i, p) in prompts.iter().enumerate() {
        b.admit(i as u64, p.clone(), vec![], SamplingParams::greedy(12)).expect("admit");
    }
    let mut out = HashMap::new();
    run_to_end(&mut b, &mut out);
    for (i, a) in alone.iter().enumerate() {
        assert_eq!(&out[&(i as u64)], a, "sequence {i}");
    }
}

#[test]
fn sequence_admitted_while_others_run_joins_and_finishes() {
    let prompts = four_prompts();
    let a_alone = generate_alone(&prompts[1], &[], SamplingParams::greedy(20));
    let b_alone = generate_alone(&prompts[2], &[], SamplingParams::greedy(20));
    let mut b = Batcher::new(llm(), 8);
    b.admit(10, prompts[1].clone(), vec![], SamplingParams::greedy(20)).expect("admit");
    let mut out = HashMap::new();
    for _ in 0..5 {
        apply(b.step().expect("step"), &mut out);
    }
    assert_eq!(out[&10].tokens.len(), 5);
    b.admit(11, prompts[2].clone(), vec![], SamplingParams::greedy(20)).expect("admit");
    assert_eq!(b.running(), 2);
    apply(b.step().expect("step"), &mut out);
    assert_eq!(out[&11].tokens.len(), 1, "the new sequence produced its first token in the next step");
    assert_eq!(out[&10].tokens.len(), 6);
    run_to_end(&mut b, &mut out);
    assert_eq!(out[&10], a_alone);
    assert_eq!(out[&11], b_alone);
}

#[test]
fn cancel_frees_kv_cache() {
    let prompts = four_prompts();
    let mut b = Batcher::new(llm(), 4);
    b.admit(1, prompts[0].clone(), vec![], SamplingParams::greedy(50)).expect("admit");
    b.admit(2, prompts[1].clone(), vec![], SamplingParams::greedy(50)).expect("admit");
    let mut out = HashMap::new();
    apply(b.step().expect("step"), &mut out);
    apply(b.step().expect("step"), &mut out);
    let both = b.kv_tokens();
    assert_eq!(both, prompts[0].len() + 1 + prompts[1].len() + 1);
    b.cancel(1);
    assert_eq!(b.running(), 1);
    assert_eq!(b.kv_tokens(), prompts[1].len() + 1);
    b.cancel(2);
    assert!(b.is_idle());
    assert_eq!(b.kv_tokens(), 0);
    // Admission errors are immediate.
    assert!(b.admit(3, vec![], vec![], SamplingParams::default()).is_err(), "empty prompt");
    assert!(b.admit(3, vec![1; 9000], vec![], SamplingParams::default()).is_err(), "longer than the context");
    for i in 0..4 {
        b.admit(10 + i, prompts[0].clone(), vec![], SamplingParams::default()).expect("admit");
    }
    assert!(b.admit(20, prompts[0].clone(), vec![], SamplingParams::default()).is_err(), "batch full");
}

#[test]
fn max_tokens_finishes_with_length() {
    let prompt = chat_prompt(&llm(), "Write a long story about a dragon.");
    let o = generate_alone(&prompt, &[], SamplingParams::greedy(7));
    assert_eq!(o.reason, Some(FinishReason::Length));
    assert_eq!(o.completion_tokens, 7);
    assert_eq!(o.tokens.len(), 7);
    assert_eq!(o.text, llm().decode(&o.tokens).expect("decode"));
}

#[test]
fn stop_sequence_cuts_the_text() {
    let prompt = chat_prompt(&llm(), PARIS);
    let params = SamplingParams { stop: vec![" Paris".into()], ..SamplingParams::greedy(64) };
    let o = generate_alone(&prompt, &[], params);
    assert_eq!(o.text, "The capital of France is");
    assert_eq!(o.reason, Some(FinishReason::Stop));
    let params = SamplingParams { stop: vec!["France is P".into()], ..SamplingParams::greedy(64) };
    let o = generate_alone(&prompt, &[], params);
    assert_eq!(o.text, "The capital of ");
}

#[test]
fn resume_continues_where_another_node_stopped() {
    let prompt = chat_prompt(&llm(), "Write a short poem about the sea.");
    let full = generate_alone(&prompt, &[], SamplingParams::greedy(16));
    assert_eq!(full.tokens.len(), 16);
    let k = 5;
    let rest = generate_alone(&prompt, &full.tokens[..k], SamplingParams::greedy(16));
    assert_eq!(rest.tokens, full.tokens[k..].to_vec());
    assert_eq!(rest.completion_tokens, 16);
    assert_eq!(rest.reason, Some(FinishReason::Length));
    let head = llm().decode(&full.tokens[..k]).expect("decode");
    assert_eq!(format!("{head}{}", rest.text), full.text);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let prompt = chat_prompt(&llm(), "Tell me a fun fact about octopuses.");
    let params = |seed| SamplingParams {
        max_tokens: 20,
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        seed: Some(seed),
        ..Default::default()
    };
    let a = generate_alone(&prompt, &[], params(42));
    let b = generate_alone(&prompt, &[], params(42));
    assert_eq!(a, b);
    let others: Vec<Outcome> = (1..4).map(|s| generate_alone(&prompt, &[], params(s))).collect();
    assert!(others.iter().any(|o| o.tokens != a.tokens), "different seeds should give different text");
}

fn greedy_two_stage(first: &Llm, second: &Llm, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut c1: KvCache = first.new_cache();
    let mut c2: KvCache = second.new_cache();
    let mut feed = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let hidden = match first.forward_stage(&mut [&mut c1], StageInput::Tokens(vec![feed])).expect("stage 1") {
            StageOutput::Hidden(h) => h,
            StageOutput::Logits(_) => panic!("first stage must return hidden states"),
        };
        assert_eq!(hidden.hidden, 576);
        let logits = match second.forward_stage(&mut [&mut c2], StageInput::Hidden(hidden)).expect("stage 2") {
            StageOutput::Logits(l) => l,
            StageOutput::Hidden(_) => panic!("last stage must return logits"),
        };
        let row = &logits[0];
        let next = row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
        out.push(next);
        feed = vec![next];
    }
    out
}

#[test]
fn two_stage_split_equals_the_whole_model() {
    let whole = llm();
    let first = Llm::load(&gguf_path(), &LlmOptions { layers: Some(0..15), ..Default::default() }).expect("stage 1");
    let second = Llm::load(&gguf_path(), &LlmOptions { layers: Some(15..30), ..Default::default() }).expect("stage 2");
    assert!(first.is_first_stage() && !first.is_last_stage());
    assert!(!second.is_first_stage() && second.is_last_stage());
    let prompt = chat_prompt(&whole, PARIS);
    let reference = generate_alone(&prompt, &[], SamplingParams::greedy(10));
    let split = greedy_two_stage(&first, &second, &prompt, reference.tokens.len());
    assert_eq!(split, reference.tokens);
    assert_eq!(whole.decode(&split).expect("decode"), "The capital of France is Paris.");
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn embeddings_match_sentence_transformers() {
    let e = embedder();
    assert_eq!(e.dims(), 384);
    let texts: Vec<String> =
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let out = e.embed(&texts).expect("embed");
    assert_eq!(out.vectors.len(), 3);
    for v in &out.vectors {
        assert_eq!(v.len(), 384);
        assert!((cos(v, v) - 1.0).abs() < 1e-4);
    }
    let c01 = cos(&out.vectors[0], &out.vectors[1]);
    let c02 = cos(&out.vectors[0], &out.vectors[2]);
    assert!((c01 - 0.7553).abs() < 1e-3, "cos = {c01}");
    assert!((c02 - -0.1050).abs() < 1e-3, "cos = {c02}");
    // Batching does not change a text's embedding.
    let alone = e.embed(&texts[1..2]).expect("embed");
    assert!((cos(&alone.vectors[0], &out.vectors[1]) - 1.0).abs() < 1e-4);
    assert_eq!(out.tokens[0], e.count_tokens(&texts[0]).expect("count"));
    assert_eq!(out.tokens[0], 8, "[CLS] a man is eating food . [SEP]");
    let long = "word ".repeat(1000);
    assert_eq!(e.count_tokens(&long).expect("count"), 1002, "counted whole: [CLS] 1000 words [SEP]");
    let truncated = e.embed(&[long]).expect("embed long");
    assert_eq!(truncated.tokens[0], e.max_input_tokens(), "embedded truncated like sentence-transformers");
    assert_eq!(e.max_input_tokens(), 256);
}

#[test]
fn inspect_reports_model_facts() {
    let info = inspect(&gguf_path()).expect("inspect gguf");
    assert_eq!(info.format, ModelFormat::Gguf);
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.layers, 30);
    assert_eq!(info.hidden_size, 576);
    assert_eq!(info.context_length, 8192);
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.capabilities, vec![Capability::Chat, Capability::Completion]);
    assert_eq!(info.files, vec!["SmolLM2-135M-Instruct.Q4_1.gguf".to_string()]);
    let len = std::fs::metadata(gguf_path()).expect("stat").len();
    assert!(info.weight_bytes > len * 9 / 10 && info.weight_bytes <= len, "{} of {len}", info.weight_bytes);

    let info = inspect(&minilm_path()).expect("inspect minilm");
    assert_eq!(info.format, ModelFormat::Safetensors);
    assert_eq!(info.architecture, "bert");
    assert_eq!(info.capabilities, vec![Capability::Embedding]);
    assert_eq!(info.hidden_size, 384);
    assert_eq!(info.layers, 6);
    assert_eq!(info.context_length, 512);
    assert_eq!(info.files, vec!["model.safetensors", "tokenizer.json", "config.json"]);
    assert!(info.weight_bytes > 80_000_000);
}

#[test]
fn inspect_rejects_broken_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A GGUF file cut in half: the header parses but tensor data is missing.
    let data = std::fs::read(gguf_path()).expect("read gguf");
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &data[..data.len() / 2]).expect("write");
    let err = inspect(&truncated).expect_err("truncated").to_string();
    assert!(err.contains("truncated.gguf") && err.contains("truncated"), "{err}");
    assert!(Llm::load(&truncated, &LlmOptions::default()).is_err());
    // Only the start of the header.
    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &data[..1000]).expect("write");
    let err = inspect(&header_only).expect_err("cut header").to_string();
    assert!(err.contains("header.gguf") && err.contains("GGUF"), "{err}");
    // Random bytes.
    let random = dir.path().join("random.bin");
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&random, bytes).expect("write");
    let err = inspect(&random).expect_err("random").to_string();
    assert!(err.contains("random.bin") && err.contains("unknown model format"), "{err}");
    // An empty folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = inspect(&empty).expect_err("empty").to_string();
    assert!(err.contains("empty") && err.contains("config.json"), "{err}");
    assert!(err.lines().count() == 1);
    // Missing path.
    assert!(inspect(&dir.path().join("nothing")).is_err());
}
