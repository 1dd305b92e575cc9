#!/usr/bin/env python3
"""sentence-transformers CPU embedding throughput, for comparison with Shoal's embed path.

Encodes a batch of --batch texts from sentences.py (short: 11-12 words; long: 120 tokens),
normalize_embeddings=True, one warm-up call, then --repeat timed calls of the whole
batch; reports sentences/s (= batch * repeat / elapsed) plus the median single-call time.
Prints ONE JSON line on stdout (last line); logs go to stderr.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ beside sentences.py (not git-ignored)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fail(msg):
    print(f"st_embed: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="sentence-transformers model folder")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kind", choices=["short", "long"], default="short")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", choices=["auto", "modules"], default="auto",
                    help="auto: load the folder (modules.json) and fall back to building "
                         "Transformer+mean Pooling+Normalize by hand; modules: always by hand")
    a = ap.parse_args()
    if not os.path.isdir(a.model):
        fail(f"model folder not found: {a.model}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch
        import sentence_transformers
        from sentence_transformers import SentenceTransformer
    except Exception as e:  # noqa: BLE001
        fail(f"import failed ({e!r}); run scripts/compare/setup.sh")
    import sentences

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    t0 = time.perf_counter()
    how = "folder"
    try:
        if a.load == "modules":
            raise RuntimeError("--load modules")
        if not os.path.exists(os.path.join(a.model, "modules.json")):
            raise FileNotFoundError("no modules.json")
        model = SentenceTransformer(a.model, device="cpu", local_files_only=True)
    except Exception as e:  # noqa: BLE001
        log(f"loading folder as a SentenceTransformer failed ({e!r}); building modules by hand")
        how = "modules"
        try:  # sentence-transformers >= 6 moved the module classes
            from sentence_transformers.sentence_transformer import modules as models
        except ImportError:
            from sentence_transformers import models
        tr = models.Transformer(a.model, max_seq_length=256)  # as sentence_bert_config.json
        dim = (tr.get_embedding_dimension() if hasattr(tr, "get_embedding_dimension")
               else tr.get_word_embedding_dimension())
        model = SentenceTransformer(modules=[tr, models.Pooling(dim, "mean"), models.Normalize()],
                                    device="cpu")
    model.eval()
    load_s = time.perf_counter() - t0
    log(f"loaded {a.model} via {how} in {load_s:.2f}s; max_seq_length={model.max_seq_length}")

    texts = (sentences.short if a.kind == "short" else sentences.long)(a.batch)

    def enc(x):
        return model.encode(x, batch_size=a.batch, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    with torch.inference_mode():
        # cross-check cosines (vectors are unit-norm, so dot == cosine)
        v = enc(["A man is eating food.", "A man is eating a piece of bread.",
                 "The girl is carrying a baby."])
        cos_bread = float(v[0] @ v[1])
        cos_baby = float(v[0] @ v[2])
        log(f"cosine(food, bread)={cos_bread:.4f} cosine(food, baby)={cos_baby:.4f}")

        enc(texts)  # warm-up
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            out = enc(texts)
            times.append(time.perf_counter() - t)
        total = sum(times)
    times.sort()
    res = {
        "tool": "sentence-transformers",
        "version": sentence_transformers.__version__,
        "torch": torch.__version__,
        "threads": a.threads,
        "kind": a.kind,
        "batch": a.batch,
        "repeat": a.repeat,
        "dim": int(out.shape[1]),
        "sentences_per_s": round(a.batch * a.repeat / total, 2),
        "batch_ms_median": round(times[len(times) // 2] * 1000, 2),
        "batch_ms_min": round(times[0] * 1000, 2),
        "cos_food_bread": round(cos_bread, 4),
        "cos_food_baby": round(cos_baby, 4),
        "load": how,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
