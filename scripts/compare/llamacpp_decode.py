#!/usr/bin/env python3
"""llama.cpp (via llama-cpp-python) greedy decode throughput on CPU.

Prompt: the user message "Write a long story about a dragon." rendered through the GGUF's
own chat template (tokenizer.chat_template, with the assistant generation prompt).
Greedy (temperature 0 / argmax); every end-of-generation token is banned (logit bias
-1e9 on all tokens llama_vocab_is_eog says are EOG) so exactly --tokens tokens come out.

--streams 1 (method "high-level"): Llama.create_chat_completion(stream=True,
    temperature=0, max_tokens=T, logit_bias=EOG ban) -- the API a user serves with.
    prefill = time to the first streamed token; decode_tok_s = (T-1) / (t_last - t_first);
    total_tok_s = T / (t_last - t_call).  engine_* figures are llama.cpp's own perf
    counters (llama_perf_context: t_p_eval / t_eval), i.e. without Python overhead.
--streams S>1, --method batch (default): the low-level API -- a second context with
    n_seq_max=S and a unified KV cache; the S prompts are prefilled in one llama_batch
    (seq_id 0..S-1), then each step decodes one llama_batch holding S tokens (one per
    sequence) and argmaxes S logit rows.  Figures are aggregate over S streams;
    per_stream_tok_s = decode_tok_s / S.  All S prompts are identical (greedy => the
    streams produce the same text; the compute is the same as for different texts).
--streams S>1, --method sequential: S requests served one after another by the
    high-level API (what llama-cpp-python's single-sequence Llama object gives S
    concurrent users); aggregate rate = single rate; latency of the last user reported.
Each measurement is repeated --repeat times after one warm-up; the median run is reported.
Prints ONE JSON line on stdout (last line); logs go to stderr.
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

PROMPT = "Write a long story about a dragon."


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fail(msg):
    print(f"llamacpp_decode: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def cpu_has_amx():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


def without_extra_buffer_types():
    """Load models with use_extra_bufts off (no weight repacking, no AMX buffers): on the Intel
    Xeon machines with AMX that this project runs on, that path of llama.cpp b11434 crashes in
    llama_decode (SIGSEGV). The plain CPU kernels (AVX-512/AVX2) still run."""
    import llama_cpp
    import llama_cpp.llama

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = params
    llama_cpp.llama.llama_cpp.llama_model_default_params = params


def eog_tokens(llama_cpp, vocab, n_vocab):
    return [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def render_prompt(llm, llama_chat_format):
    tmpl = llm.metadata.get("tokenizer.chat_template")
    if not tmpl:
        fail("GGUF has no tokenizer.chat_template")

    def tok_str(key):
        tid = int(llm.metadata.get(key, -1))
        return llm._model.token_get_text(tid) if tid >= 0 else ""

    fmt = llama_chat_format.Jinja2ChatFormatter(
        template=tmpl,
        eos_token=tok_str("tokenizer.ggml.eos_token_id"),
        bos_token=tok_str("tokenizer.ggml.bos_token_id"),
        add_generation_prompt=True,
    )
    return fmt(messages=[{"role": "user", "content": PROMPT}]).prompt


def run_high_level(llm, llama_cpp, T, bias):
    """One streamed chat completion; returns timing dict."""
    llm.reset()  # no prompt-prefix reuse between runs
    ctx = llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    t0 = time.perf_counter()
    t_first = None
    t_last = None
    n_chunks = 0
    finish = None
    text = []
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=T, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
        repeat_penalty=1.0, logit_bias=bias, stream=True,
    ):
        ch = chunk["choices"][0]
        if ch.get("finish_reason"):
            finish = ch["finish_reason"]
        if ch.get("delta", {}).get("content"):
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            t_last = now
            n_chunks += 1
            text.append(ch["delta"]["content"])
    t_end = time.perf_counter()
    perf = llama_cpp.llama_perf_context(ctx)
    if finish != "length":
        fail(f"generation stopped early (finish_reason={finish!r}); EOG ban did not hold")
    return {
        "ttft_s": t_first - t0,
        "decode_s": t_last - t_first,
        "total_s": t_last - t0,
        "call_s": t_end - t0,
        "chunks": n_chunks,
        "text": "".join(text),
        "engine_p_ms": perf.t_p_eval_ms, "engine_n_p": perf.n_p_eval,
        "engine_e_ms": perf.t_eval_ms, "engine_n_e": perf.n_eval,
    }


class BatchRunner:
    """S sequences through one context with the low-level llama_batch API."""

    def __init__(self, llm, llama_cpp, np, S, threads, n_ctx, prompt_tokens, eog):
        self.lc, self.np, self.S = llama_cpp, np, S
        self.prompt = list(prompt_tokens)
        P = len(self.prompt)
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = max(512, S * P)
        p.n_ubatch = p.n_batch
        p.n_seq_max = S
        p.n_threads = threads
        p.n_threads_batch = threads
        if hasattr(p, "kv_unified"):
            p.kv_unified = True
        p.no_perf = False
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, p)
        if not self.ctx:
            fail("llama_init_from_model failed for the batch context")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(p.n_batch, 0, S)
        self.mask = np.zeros(self.n_vocab, dtype=np.float32)
        self.mask[eog] = -np.inf
        self.nbatch = p.n_batch

    def _fill(self, items):
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if want else 0
        b.n_tokens = len(items)

    def _argmax(self, i):
        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        row = self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return int(self.np.argmax(row + self.mask))

    def run(self, T):
        lc, S, P = self.lc, self.S, len(self.prompt)
        lc.llama_memory_clear(self.mem, True)
        lc.llama_perf_context_reset(self.ctx)
        t0 = time.perf_counter()
        items = []
        for s in range(S):
            for j, tok in enumerate(self.prompt):
                items.append((tok, j, s, j == P - 1))
        self._fill(items)
        if lc.llama_decode(self.ctx, self.batch) != 0:
            fail("llama_decode (prefill) failed")
        last = [self._argmax((s + 1) * P - 1) for s in range(S)]
        outs = [[t] for t in last]
        t_first = time.perf_counter()
        for step in range(1, T):
            self._fill([(last[s], P + step - 1, s, True) for s in range(S)])
            if lc.llama_decode(self.ctx, self.batch) != 0:
                fail(f"llama_decode failed at step {step}")
            last = [self._argmax(s) for s in range(S)]
            for s in range(S):
                outs[s].append(last[s])
        t_last = time.perf_counter()
        # llama.cpp's perf counters book any multi-token batch as prompt eval, so they
        # cannot separate prefill from S-token decode steps here: not reported.
        return {
            "ttft_s": t_first - t0, "decode_s": t_last - t_first, "total_s": t_last - t0,
            "engine_p_ms": 0, "engine_n_p": 0, "engine_e_ms": 0, "engine_n_e": 0,
            "outs": outs,
        }

    def close(self):
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--method", choices=["batch", "sequential"], default="batch",
                    help="how S>1 streams are served (ignored for S=1)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=2048)
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        fail(f"model not found: {a.model}")
    if a.tokens < 2 or a.streams < 1 or a.repeat < 1:
        fail("need --tokens >= 2, --streams >= 1, --repeat >= 1")

    try:
        import numpy as np
        import llama_cpp
        from llama_cpp import Llama, llama_chat_format
    except Exception as e:  # noqa: BLE001
        fail(f"import failed ({e!r}); run scripts/compare/setup.sh")

    log("llama.cpp system info:", llama_cpp.llama_print_system_info().decode(errors="replace").strip())
    if cpu_has_amx():
        without_extra_buffer_types()
        log("CPU has AMX: extra buffer types (repack, AMX) off")
    t = time.perf_counter()
    llm = Llama(model_path=a.model, n_ctx=a.n_ctx, n_threads=a.threads,
                n_threads_batch=a.threads, n_gpu_layers=0, seed=0, verbose=False)
    log(f"loaded {a.model} in {time.perf_counter() - t:.2f}s; chat_format={llm.chat_format}")
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    eog = eog_tokens(llama_cpp, vocab, llm.n_vocab())
    bias = {t: -1e9 for t in eog}
    prompt = render_prompt(llm, llama_chat_format)
    ptoks = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    log(f"EOG tokens banned: {eog}; prompt {len(ptoks)} tokens: {prompt!r}")
    S, T = a.streams, a.tokens
    if S * (len(ptoks) + T) > a.n_ctx and S > 1 and a.method == "batch":
        fail(f"S*(prompt+T)={S * (len(ptoks) + T)} exceeds --n-ctx {a.n_ctx}")

    runs = []
    if S == 1 or a.method == "sequential":
        method = "high-level create_chat_completion(stream)"
        if S > 1:
            method += f", {S} requests served sequentially (aggregate = single rate)"
        run_high_level(llm, llama_cpp, min(T, 16), bias)  # warm-up
        for _ in range(a.repeat):
            r = run_high_level(llm, llama_cpp, T, bias)
            runs.append(r)
            log(f"run: ttft {r['ttft_s'] * 1000:.1f} ms, decode {(T - 1) / r['decode_s']:.1f} tok/s, "
                f"engine decode {r['engine_n_e'] / (r['engine_e_ms'] / 1000):.1f} tok/s, chunks {r['chunks']}")
        log(f"text starts: {runs[-1]['text'][:100]!r}")
        agg = 1
    else:
        method = f"low-level llama_batch: {S} seq_ids per llama_decode, unified KV"
        br = BatchRunner(llm, llama_cpp, np, S, a.threads, a.n_ctx, ptoks, eog)
        try:
            br.run(min(T, 16))  # warm-up
            for _ in range(a.repeat):
                r = br.run(T)
                runs.append(r)
                log(f"run: prefill {r['ttft_s'] * 1000:.1f} ms, aggregate decode "
                    f"{S * (T - 1) / r['decode_s']:.1f} tok/s")
            # sanity: stream 0 should match what the high-level API generates
            first = runs[-1]["outs"][0]
            txt = llm.detokenize(first[:24]).decode("utf-8", errors="replace")
            log(f"stream 0 starts: {txt!r}")
        finally:
            br.close()
        agg = S

    runs.sort(key=lambda r: r["decode_s"])
    m = runs[len(runs) // 2]
    P = len(ptoks)
    decode_tok_s = agg * (T - 1) / m["decode_s"]
    out = {
        "tool": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "model": os.path.basename(a.model),
        "threads": a.threads,
        "streams": S,
        "tokens": T,
        "prompt_tokens": P,
        "method": method,
        "decode_tok_s": round(decode_tok_s, 2),
        "prefill_tok_s": round(agg * P / m["ttft_s"], 2),
        "total_tok_s": round(agg * T / m["total_s"], 2),
        "ttft_ms": round(m["ttft_s"] * 1000, 2),
        "engine_decode_tok_s": round(m["engine_n_e"] / (m["engine_e_ms"] / 1000), 2) if m["engine_e_ms"] else None,
        "engine_prefill_tok_s": round(m["engine_n_p"] / (m["engine_p_ms"] / 1000), 2) if m["engine_p_ms"] else None,
        "repeat": a.repeat,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "decode_tok_s_runs": [round(agg * (T - 1) / r["decode_s"], 2) for r in runs],
    }
    if S > 1:
        out["per_stream_tok_s"] = round(decode_tok_s / S, 2)
        if a.method == "sequential":
            # the last of S users waits for S full generations
            out["last_stream_latency_ms"] = round(S * m["call_s"] * 1000, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
