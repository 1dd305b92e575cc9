#!/usr/bin/env python3
"""Greedy tokens from llama.cpp (llama-cpp-python) for the token-exactness check of Shoal's engine.

For each GGUF given, five chat prompts (Qwen2.5's chat format with its default system message,
written out here so that both sides read the same text) are tokenized by llama.cpp (special
tokens parsed, no BOS, as the Qwen2.5 GGUFs say) and decoded greedily: after each step the
argmax of the last logits (the first on ties), up to --tokens tokens or an end-of-generation
token (kept), with the gap between the two largest logits at each step (how near a tie
the choice was). llama.cpp runs its plain CPU kernels (llamacpp_decode.without_extra_buffer_types). Writes JSON: {"llama_cpp_python": VERSION, "models": {NAME: {"prompts": [{"text",
"prompt_tokens", "tokens", "gaps"}]}}} to --out (default: print).

  .bench-venv/bin/python scripts/compare/llamacpp_tokens.py --out engine/tests/fixtures/llama_cpp_tokens.json \\
      models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
      models/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

engine/tests/llama_cpp_tokens.rs compares Shoal's greedy tokens with the recorded file, and with
a fresh run of this script when the comparison venv exists.
"""
import argparse
import json
import os
import sys

import llama_cpp
import numpy as np

from llamacpp_decode import without_extra_buffer_types

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QUESTIONS = [
    "What is the capital of France? Answer briefly.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences what a hash table is.",
    "Write a SQL query that counts the orders per customer in a table orders(id, customer_id, total).",
    "List three differences between TCP and UDP.",
]


def chat_text(question):
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def greedy(llm, prompt, n_tokens):
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llm.n_vocab()
    llm.reset()
    llm.eval(prompt)
    out, gaps = [], []
    for _ in range(n_tokens):
        row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
        best = int(np.argmax(row))  # the first of equal maxima
        top2 = np.partition(row, -2)[-2:]
        out.append(best)
        gaps.append(round(float(top2[1] - top2[0]), 4))
        if llama_cpp.llama_vocab_is_eog(vocab, best):
            break
        llm.eval([best])
    return out, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", nargs="+")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--extra-buffer-types", action="store_true",
                    help="keep llama.cpp's repacked/AMX weight buffers (crash on AMX machines here)")
    a = ap.parse_args()
    if not a.extra_buffer_types:
        without_extra_buffer_types()
    result = {"llama_cpp_python": llama_cpp.__version__, "models": {}}
    for path in a.gguf:
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=a.threads, n_batch=512, verbose=False)
        prompts = []
        for q in QUESTIONS:
            text = chat_text(q)
            toks = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            gen, gaps = greedy(llm, toks, a.tokens)
            print(f"{name}: {q[:40]!r}: {len(gen)} tokens: {llm.detokenize(gen).decode('utf-8', 'replace')!r}",
                  file=sys.stderr)
            prompts.append({"text": text, "prompt_tokens": toks, "tokens": gen, "gaps": gaps})
        result["models"][name] = {"file": os.path.basename(path), "prompts": prompts}
        del llm
    text = json.dumps(result, ensure_ascii=False)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {a.out}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
