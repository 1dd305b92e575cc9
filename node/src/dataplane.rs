//! The node's own QUIC endpoint (mutual TLS under the cluster CA): pings, generation and
//! embedding requests for the replicas here, and model files for peers that fetch them.

use std::sync::Arc;

use shoal_engine::{ChatMessage, ChatToolCall, Purpose};
use shoal_protocol::quic::{self, ServerStream};
use shoal_protocol::tls::MemberRole;
use std::time::{Duration, Instant};

use shoal_protocol::{
    EmbedAs, Finish, GenerateRequest, IndexChunk, Prompt, RefusalCode, Request, Response, StageForward, StageResult,
    MAX_DOCUMENT_CHUNK_BYTES,
};
use shoal_recall::{chunk_text, ChunkConfig};
use tracing::debug;

use crate::index::IndexRefusal;
use crate::models::llm::{AdmitError, SeqEvent};
use crate::models::pipeline::{forward_onward, onward, remaining_budget};
use crate::models::stage::{ForwardError, StageOut};
use crate::models::{sampling_params, Engine, ModelHost};

/// Serves one data-plane stream.
pub async fn handle(host: Arc<ModelHost>, mcp_stdio: bool, conn: quinn::Connection, mut stream: ServerStream) {
    let Some((role, member)) = quic::peer_member(&conn) else {
        return stream.refuse(RefusalCode::Unauthenticated, "data-plane streams need a member certificate").await;
    };
    loop {
        let request = stream.recv().await;
        if let Ok(Some(req)) = &request {
            if let Err(why) = authorize(role, &member, req) {
                return stream.refuse(RefusalCode::Unauthenticated, why).await;
            }
        }
        match request {
            Ok(Some(Request::Ping { seq, payload })) => {
                if stream.send(&Response::Pong { seq, payload }).await.is_err() {
                    return;
                }
            }
            Ok(Some(Request::Generate(_) | Request::Embed { .. } | Request::EmbedDocument { .. }))
                if host.is_draining() =>
            {
                // Retryable: the router sends it to another replica.
                return stream.refuse(RefusalCode::Unavailable, "this node is draining (shutting down)").await;
            }
            Ok(Some(Request::Generate(req))) => return generate(&host, stream, req).await,
            Ok(Some(Request::Embed { placement_id, inputs, purpose })) => {
                embed(&host, &mut stream, &placement_id, inputs, purpose).await;
            }
            Ok(Some(Request::FetchArtifact { sha256, offset })) => {
                return host.store.serve(&mut stream, &sha256, offset).await
            }
            Ok(Some(Request::StageForward(frame))) => return stage_link(host, (role, member), stream, frame).await,
            Ok(Some(Request::StageRelease { placement_id, sequences })) => {
                return stage_release(&host, stream, placement_id, sequences).await
            }
            Ok(Some(Request::EmbedDocument { placement_id, text, max_tokens, overlap_tokens })) => {
                embed_document(&host, &mut stream, &placement_id, text, max_tokens, overlap_tokens).await;
            }
            Ok(Some(Request::IndexUpsert { shard_id, document, chunks })) => {
                let r = host.index.upsert(&shard_id, document, chunks).await;
                answer(
                    &mut stream,
                    r.map(|(chunks, unchanged)| Response::IndexWritten { chunks, unchanged, existed: true }),
                )
                .await;
            }
            Ok(Some(Request::IndexDelete { shard_id, doc_id })) => {
                let r = host.index.delete(&shard_id, doc_id).await;
                answer(
                    &mut stream,
                    r.map(|existed| Response::IndexWritten { chunks: 0, unchanged: !existed, existed }),
                )
                .await;
            }
            Ok(Some(Request::IndexSearch { shard_id, query })) => {
                let r = host.index.search(&shard_id, query).await;
                answer(&mut stream, r.map(|hits| Response::IndexHits { hits })).await;
            }
            Ok(Some(Request::IndexExport { shard_id })) => return export(&host, stream, &shard_id).await,
            Ok(Some(Request::McpStdio { server, command })) => {
                return crate::mcp_stdio::serve(stream, mcp_stdio, server, command).await
            }
            Ok(Some(other)) => {
                let msg = format!("a node does not serve '{}' requests", other.kind());
                return stream.refuse(RefusalCode::BadRequest, msg).await;
            }
            Ok(None) | Err(_) => return stream.finish(),
        }
    }
}

/// Whether a member with this certificate may make this request: index writes come only
/// from gateways (standalone, or embedded in a coordinator, which use the coordinator's
/// certificate), never from another node; artifacts go to coordinators and nodes, never to
/// a gateway; everything else any member may ask (a rebuilding copy exports from a peer
/// node).
pub fn authorize(role: MemberRole, member: &str, req: &Request) -> Result<(), String> {
    match (role, req) {
        (MemberRole::Node, Request::IndexUpsert { .. } | Request::IndexDelete { .. }) => Err(format!(
            "'{}' requests write to an index and only a gateway or coordinator may send them; node {member} may not",
            req.kind()
        )),
        // Gateways route requests; model files go only to the members that run models.
        (MemberRole::Gateway, Request::FetchArtifact { .. }) => {
            Err(format!("artifacts are served to coordinators and nodes; gateway {member} may not fetch them"))
        }
        // Tools run for the gateways that execute graph steps, never for another node.
        (MemberRole::Node, Request::McpStdio { .. }) => {
            Err(format!("stdio MCP servers run for gateways and coordinators; node {member} may not start one"))
        }
        _ => Ok(()),
    }
}

/// Frames in flight on one link before the stage stops reading more (a chain has as many
/// micro-batches in flight as stages).
const LINK_FRAMES: usize = 16;

/// Serves a stage link: the previous stage sends its activation frames on one stream, back to
/// back. Each frame starts as it arrives (and goes on down the chain without waiting for the
/// frames before it); the answers go back in the order of the frames. A frame that fails is
/// answered with its refusal and the link goes on; anything but a frame ends the link.
async fn stage_link(host: Arc<ModelHost>, peer: (MemberRole, String), stream: ServerStream, first: StageForward) {
    let (mut sender, mut receiver) = stream.split();
    let (answers_tx, mut answers) = tokio::sync::mpsc::channel::<tokio::task::JoinHandle<Response>>(LINK_FRAMES);
    let read = async move {
        let mut frame = Some(first);
        loop {
            let next = match frame.take() {
                Some(f) => f,
                None => match receiver.recv().await {
                    Ok(Some(req)) => match (authorize(peer.0, &peer.1, &req), req) {
                        (Ok(()), Request::StageForward(f)) => f,
                        (allowed, other) => {
                            let (code, why) = match allowed {
                                Err(why) => (RefusalCode::Unauthenticated, why),
                                Ok(()) => (
                                    RefusalCode::BadRequest,
                                    format!("a stage link carries activation frames, not '{}'", other.kind()),
                                ),
                            };
                            let refusal = Response::refused(code, why);
                            let _ = answers_tx.send(tokio::spawn(async move { refusal })).await;
                            return;
                        }
                    },
                    Ok(None) | Err(_) => return,
                },
            };
            let host = Arc::clone(&host);
            if answers_tx.send(tokio::spawn(async move { stage_answer(&host, next).await })).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some(work) = answers.recv().await {
            let answer = work
                .await
                .unwrap_or_else(|e| Response::refused(RefusalCode::Unavailable, format!("the stage failed: {e}")));
            if sender.send(&answer).await.is_err() {
                return;
            }
        }
        sender.finish();
    };
    tokio::join!(read, write);
}

/// Runs this stage's layers over a frame, then relays the activations to the next stage and
/// returns its answer (or the sampled tokens on the last stage), or the refusal.
async fn stage_answer(host: &ModelHost, frame: StageForward) -> Response {
    let received = Instant::now();
    let Some(Engine::Stage(h)) = host.engine(&frame.placement_id) else {
        let msg = format!("no ready stage {} on this node (it moved or is still loading)", frame.placement_id);
        return Response::refused(RefusalCode::NotFound, msg);
    };
    let budget = Duration::from_millis(frame.budget_ms as u64);
    let result = h.forward(frame).await;
    // Time spent here (waiting behind other frames and computing): the hop before this stage
    // is measured as the round trip less this and what follows.
    let here_us = received.elapsed().as_micros() as u64;
    match result {
        Err(ForwardError::Overloaded(msg)) => Response::refused(RefusalCode::Overloaded, msg),
        Err(ForwardError::Failed(msg)) => Response::refused(RefusalCode::Unavailable, msg),
        Ok(StageOut::Tokens { tokens }) => Response::StageDone(StageResult { tokens, compute_us: here_us, hops_us: 0 }),
        Ok(StageOut::Hidden { sequences, hidden }) => {
            let Some(hop) = h.link.next() else {
                let msg = format!("stage {} has no next stage placed yet", h.index);
                return Response::refused(RefusalCode::Unavailable, msg);
            };
            let budget = remaining_budget(budget, received);
            let next = StageForward {
                placement_id: hop.placement_id.clone(),
                sequences,
                hidden,
                budget_ms: budget.as_millis().min(u32::MAX as u128) as u32,
            };
            let labels = [("model", h.model.clone()), ("stage", h.index.to_string())];
            match forward_onward(&h.link, &hop, next, budget, &labels).await {
                Ok(r) => Response::StageDone(StageResult {
                    tokens: r.tokens,
                    compute_us: r.compute_us + here_us,
                    hops_us: r.hops_us,
                }),
                Err(msg) => Response::refused(RefusalCode::Unavailable, msg),
            }
        }
    }
}

/// Forgets sequences here and on the stages after this one.
async fn stage_release(host: &ModelHost, mut stream: ServerStream, placement: String, sequences: Vec<u64>) {
    if let Some(Engine::Stage(h)) = host.engine(&placement) {
        h.release(sequences.clone());
        if let Some(hop) = h.link.next() {
            let req = Request::StageRelease { placement_id: hop.placement_id.clone(), sequences };
            if let Err(e) = onward(&h.link.pool, &hop, &req, h.link.timeout).await {
                debug!(error = %e, "releasing sequences further down failed; they expire there");
            }
        }
    }
    let _ = stream.send(&Response::StageReleased).await;
    stream.finish();
}

async fn embed(host: &ModelHost, stream: &mut ServerStream, placement: &str, inputs: Vec<String>, purpose: EmbedAs) {
    let Some(Engine::Embed(h)) = host.engine(placement) else {
        return stream.refuse(RefusalCode::NotFound, format!("no ready embedding replica {placement} here")).await;
    };
    let purpose = match purpose {
        EmbedAs::Given => Purpose::AsGiven,
        EmbedAs::Query => Purpose::Query,
        EmbedAs::Passage => Purpose::Passage,
    };
    let inputs = inputs.iter().map(|t| h.embedder.prefixed(t, purpose)).collect();
    let Some(result) = unless_abandoned(stream, h.embed(inputs)).await else { return };
    match result {
        Ok((vectors, tokens)) => {
            let _ = stream.send(&Response::Embedded { vectors, tokens: tokens as u32 }).await;
        }
        Err(None) => stream.refuse(RefusalCode::Overloaded, format!("replica {placement} is at capacity")).await,
        Err(Some(e)) => stream.refuse(RefusalCode::BadRequest, e).await,
    }
}

/// Runs `work` unless the peer abandons the stream first (the gateway timed out or its
/// client went away): then the work is dropped, which drops what it queued, and `None`.
async fn unless_abandoned<T>(stream: &ServerStream, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        () = stream.abandoned() => {
            debug!("the peer abandoned the stream; dropping its work");
            None
        }
    }
}

/// Sends an index operation's answer, or its refusal.
async fn answer(stream: &mut ServerStream, result: Result<Response, IndexRefusal>) {
    match result {
        Ok(r) => {
            let _ = stream.send(&r).await;
        }
        Err(IndexRefusal::NotFound(m)) => stream.refuse(RefusalCode::NotFound, m).await,
        Err(IndexRefusal::Unavailable(m)) => stream.refuse(RefusalCode::Unavailable, m).await,
        Err(IndexRefusal::BadRequest(m)) => stream.refuse(RefusalCode::BadRequest, m).await,
        Err(IndexRefusal::Overloaded(m)) => stream.refuse(RefusalCode::Overloaded, m).await,
    }
}

/// Streams an index-shard copy's documents to a peer rebuilding its own copy.
async fn export(host: &ModelHost, mut stream: ServerStream, shard_id: &str) {
    let frames = match host.index.export(shard_id).await {
        Ok(f) => f,
        Err(e) => return answer(&mut stream, Err(e)).await,
    };
    let n = frames.len();
    for (i, documents) in frames.into_iter().enumerate() {
        if stream.send(&Response::IndexExported { documents, last: i + 1 == n }).await.is_err() {
            return;
        }
    }
    stream.finish();
}

/// Chunks a document's text with the embedding model's tokenizer and embeds every chunk.
async fn embed_document(
    host: &ModelHost,
    stream: &mut ServerStream,
    placement: &str,
    text: String,
    max_tokens: u32,
    overlap_tokens: u32,
) {
    let Some(Engine::Embed(h)) = host.engine(placement) else {
        return stream.refuse(RefusalCode::NotFound, format!("no ready embedding replica {placement} here")).await;
    };
    // Chunks never exceed what the model embeds whole.
    let max_tokens = (max_tokens as usize).min(h.embedder.max_input_tokens());
    let config = ChunkConfig { max_tokens, overlap_tokens: (overlap_tokens as usize).min(max_tokens / 2) };
    let embedder = h.embedder.clone();
    let chunked = tokio::task::spawn_blocking(move || {
        let count = |s: &str| embedder.count_tokens(s).unwrap_or(usize::MAX);
        chunk_text(&text, &config, &count)
    })
    .await;
    let chunks = match chunked {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return stream.refuse(RefusalCode::BadRequest, e.to_string()).await,
        Err(e) => return stream.refuse(RefusalCode::Unavailable, format!("chunking panicked: {e}")).await,
    };
    let dims = h.embedder.dims();
    let bytes: usize = chunks.iter().map(|c| c.text.len() + dims * 4 + 32).sum();
    if bytes > MAX_DOCUMENT_CHUNK_BYTES {
        let msg = format!(
            "the document makes {} chunks taking {} MiB with their vectors; at most {} MiB per document: split it",
            chunks.len(),
            bytes >> 20,
            MAX_DOCUMENT_CHUNK_BYTES >> 20
        );
        return stream.refuse(RefusalCode::BadRequest, msg).await;
    }
    // One request: the batcher embeds it in pieces, sharing each batch with other callers.
    let texts: Vec<String> = chunks.iter().map(|c| h.embedder.prefixed(&c.text, Purpose::Passage)).collect();
    let Some(result) = unless_abandoned(stream, h.embed(texts)).await else { return };
    let (vectors, tokens) = match result {
        Ok(r) => r,
        Err(None) => {
            return stream.refuse(RefusalCode::Overloaded, format!("replica {placement} is at capacity")).await
        }
        Err(Some(e)) => return stream.refuse(RefusalCode::BadRequest, e).await,
    };
    let out: Vec<IndexChunk> = chunks
        .iter()
        .zip(vectors)
        .map(|(c, v)| IndexChunk {
            text: c.text.clone(),
            start: c.start as u64,
            end: c.end as u64,
            tokens: c.tokens as u32,
            vector: v,
        })
        .collect();
    let _ = stream.send(&Response::EmbeddedChunks { chunks: out, tokens: tokens as u32 }).await;
}

/// The no-op model: the prompt's last message comes back as one token.
async fn echo(mut stream: ServerStream, req: GenerateRequest) {
    let text = match req.prompt {
        Prompt::Chat(turns) => turns.last().map(|t| t.content.clone()).unwrap_or_default(),
        Prompt::ToolChat(chat) => chat.turns.last().map(|t| t.content.clone()).unwrap_or_default(),
        Prompt::Text(t) => t,
    };
    let frames = [
        Response::GenerationStarted { prompt_tokens: 1 },
        Response::Generated { tokens: vec![0], text },
        Response::GenerationDone { finish: Finish::Stop, prompt_tokens: 1, completion_tokens: 1 },
    ];
    for f in &frames {
        if stream.send(f).await.is_err() {
            return;
        }
    }
    stream.finish();
}

/// The engine's messages for a chat's turns (with their tool calls and results).
fn chat_messages(turns: &[shoal_protocol::ChatTurn]) -> Vec<ChatMessage> {
    turns
        .iter()
        .map(|t| {
            let mut m = ChatMessage::new(&t.role, &t.content);
            m.tool_call_id = t.tool_call_id.clone();
            m.tool_calls = t
                .tool_calls
                .iter()
                .map(|c| ChatToolCall { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() })
                .collect();
            m
        })
        .collect()
}

async fn generate(host: &ModelHost, stream: ServerStream, req: GenerateRequest) {
    let engine = host.engine(&req.placement_id);
    if let Some(Engine::Echo) = engine {
        return echo(stream, req).await;
    }
    generate_llm(engine, stream, req).await
}

/// How often a sequence that has no token yet says it is still being worked on.
const STILL_WORKING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

async fn generate_llm(engine: Option<Engine>, mut stream: ServerStream, req: GenerateRequest) {
    let Some(Engine::Generate(h)) = engine else {
        let msg = format!("no ready generation replica {} here", req.placement_id);
        return stream.refuse(RefusalCode::NotFound, msg).await;
    };
    let text = match &req.prompt {
        Prompt::Chat(turns) => match h.llm.render_chat(&chat_messages(turns)) {
            Ok(t) => t,
            Err(e) => return stream.refuse(RefusalCode::BadRequest, e.to_string()).await,
        },
        Prompt::ToolChat(chat) => {
            let tools: Vec<serde_json::Value> = if chat.tools.is_empty() {
                Vec::new()
            } else {
                match serde_json::from_str(&chat.tools) {
                    Ok(t) => t,
                    Err(e) => {
                        let msg = format!("the tools are not a JSON list: {e}");
                        return stream.refuse(RefusalCode::BadRequest, msg).await;
                    }
                }
            };
            match h.llm.render_chat_with_tools(&chat_messages(&chat.turns), &tools) {
                Ok(t) => t + &chat.answer_prefix,
                Err(e) => return stream.refuse(RefusalCode::BadRequest, e.to_string()).await,
            }
        }
        Prompt::Text(t) => t.clone(),
    };
    let prompt = match h.llm.encode(&text) {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return stream.refuse(RefusalCode::BadRequest, "the prompt is empty").await,
        Err(e) => return stream.refuse(RefusalCode::BadRequest, e.to_string()).await,
    };
    let ctx = h.llm.context_length();
    if prompt.len() + req.resume.len() >= ctx {
        let msg = format!("the prompt is {} tokens; this model's context is {ctx} tokens", prompt.len());
        return stream.refuse(RefusalCode::BadRequest, msg).await;
    }
    let params = sampling_params(&req.sampling);
    let prompt_tokens = prompt.len() as u32;
    let (mut events, _guard) = match h.submit(prompt, req.resume.clone(), params) {
        Ok(x) => x,
        Err(AdmitError::Overloaded(msg)) => return stream.refuse(RefusalCode::Overloaded, msg).await,
        Err(AdmitError::Stopped) => return stream.refuse(RefusalCode::NotFound, "the replica is stopping").await,
    };
    if stream.send(&Response::GenerationStarted { prompt_tokens }).await.is_err() {
        return;
    }
    // `_guard` cancels the sequence on the engine if this task ends early (client gone),
    // also while the sequence is still queued and has sent nothing.
    let abandoned = stream.abandoned();
    tokio::pin!(abandoned);
    // Until the first token, `GenerationStarted` is repeated: a sequence queued behind others
    // or prefilling a long prompt on a slow CPU is busy, not silent (the gateway gives a
    // replica that sends nothing for 30 s up).
    let mut waiting = tokio::time::interval_at(tokio::time::Instant::now() + STILL_WORKING_EVERY, STILL_WORKING_EVERY);
    let mut first_token = false;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = waiting.tick(), if !first_token => {
                if stream.send(&Response::GenerationStarted { prompt_tokens }).await.is_err() {
                    return;
                }
                continue;
            }
            _ = &mut abandoned => {
                debug!(placement = %req.placement_id, "client went away before the answer; cancelling the sequence");
                return;
            }
        };
        let Some(ev) = ev else { break };
        let frame = match ev {
            SeqEvent::Token { token, text } => {
                first_token = true;
                Response::Generated { tokens: vec![token], text }
            }
            SeqEvent::Finished { stop, prompt_tokens, completion_tokens } => {
                let finish = if stop { Finish::Stop } else { Finish::Length };
                let done = Response::GenerationDone {
                    finish,
                    prompt_tokens: prompt_tokens as u32,
                    completion_tokens: completion_tokens as u32,
                };
                let _ = stream.send(&done).await;
                stream.finish();
                return;
            }
            SeqEvent::Failed(msg) => return stream.refuse(RefusalCode::BadRequest, msg).await,
            SeqEvent::Unavailable(msg) => return stream.refuse(RefusalCode::Unavailable, msg).await,
            SeqEvent::Lagged(msg) => return stream.refuse(RefusalCode::Overloaded, msg).await,
        };
        if stream.send(&frame).await.is_err() {
            debug!(placement = %req.placement_id, "client went away; cancelling the sequence");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::tls::{ClusterCa, Identity, NODE_SERVER_NAME};
    use shoal_protocol::IndexDocument;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// Says when it is dropped.
    struct OnDrop(Option<oneshot::Sender<()>>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn work_for_a_stream_its_peer_dropped_is_dropped() {
        shoal_protocol::install_crypto_provider();
        let ca = ClusterCa::generate().expect("ca");
        let identity = |name: &str| {
            let c = ca.issue_with_new_key(MemberRole::Node, name, &[]).expect("cert");
            Identity::from_pem(&c.cert_pem, &c.key_pem, &ca.material.cert_pem).expect("id")
        };
        let (server, client) = (identity("server"), identity("client"));
        let endpoint =
            quic::server_endpoint("127.0.0.1:0".parse().expect("addr"), server.server_config().expect("cfg"))
                .expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let (done_tx, done) = oneshot::channel::<(bool, bool)>();
        let done_tx = Arc::new(Mutex::new(Some(done_tx)));
        tokio::spawn(quic::serve(endpoint.clone(), move |_conn, mut stream: ServerStream| {
            let done_tx = done_tx.clone();
            async move {
                let _ = stream.send(&Response::Pong { seq: 1, payload: vec![] }).await;
                // Work that never ends by itself (an embedding behind a long queue).
                let (dropped_tx, dropped) = oneshot::channel();
                let guard = OnDrop(Some(dropped_tx));
                let work = async move {
                    let _guard = guard;
                    std::future::pending::<()>().await
                };
                let answered = unless_abandoned(&stream, work).await.is_some();
                let work_dropped = dropped.await.is_ok();
                if let Some(tx) = done_tx.lock().expect("lock").take() {
                    let _ = tx.send((answered, work_dropped));
                }
            }
        }));
        let ce = quic::client_endpoint(addr).expect("client");
        let conn =
            quic::connect(&ce, addr, client.client_config().expect("cfg"), NODE_SERVER_NAME).await.expect("connect");
        let mut s = quic::ClientStream::open(&conn).await.expect("open");
        assert!(matches!(s.recv().await, Ok(Response::Pong { seq: 1, .. })));
        // The gateway gives up (timeout or client gone) and drops the stream.
        drop(s);
        assert_eq!(done.await.expect("the handler ended"), (false, true), "no answer, and the work was dropped");
    }

    #[test]
    fn only_coordinators_write_to_indexes() {
        let upsert =
            Request::IndexUpsert { shard_id: "kb-0-a".into(), document: IndexDocument::default(), chunks: vec![] };
        let delete = Request::IndexDelete { shard_id: "kb-0-a".into(), doc_id: "d".into() };
        let export = Request::IndexExport { shard_id: "kb-0-a".into() };
        let ping = Request::Ping { seq: 1, payload: vec![] };
        for req in [&upsert, &delete] {
            assert_eq!(authorize(MemberRole::Coordinator, "c1", req), Ok(()));
            assert_eq!(authorize(MemberRole::Gateway, "g-1", req), Ok(()));
            let fetch = Request::FetchArtifact { sha256: "ab".into(), offset: 0 };
            assert!(authorize(MemberRole::Gateway, "g-1", &fetch).is_err_and(|why| why.contains("g-1")));
            assert_eq!(authorize(MemberRole::Node, "n2", &fetch), Ok(()));
            let why = authorize(MemberRole::Node, "n2", req).expect_err("a node may not write an index");
            assert!(why.contains("only a gateway") && why.contains("n2") && why.contains(req.kind()), "{why}");
        }
        // A rebuilding copy on another node exports from this one; pings and the rest are open.
        for req in [&export, &ping] {
            assert_eq!(authorize(MemberRole::Node, "n2", req), Ok(()));
            assert_eq!(authorize(MemberRole::Coordinator, "c1", req), Ok(()));
        }
    }

    #[test]
    fn only_gateways_and_coordinators_start_stdio_servers() {
        let start = Request::McpStdio { server: "calc".into(), command: vec!["python3".into()] };
        assert_eq!(authorize(MemberRole::Gateway, "g-1", &start), Ok(()));
        assert_eq!(authorize(MemberRole::Coordinator, "c1", &start), Ok(()));
        let why = authorize(MemberRole::Node, "n2", &start).expect_err("a node may not start one");
        assert!(why.contains("n2") && why.contains("stdio MCP"), "{why}");
    }
}
