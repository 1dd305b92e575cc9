#!/usr/bin/env python3
"""Ray Serve no-op HTTP deployment: request rate and latency of the serving layer alone.

Starts a local Ray (num_cpus=2, no dashboard), Ray Serve's HTTP proxy on 127.0.0.1:--port,
and one replica of a deployment whose handler returns a fixed small JSON
({"ok": true}).  Waits until GET / answers 200, sends --warmup requests, then drives
--requests GETs from --concurrency client threads in this same process, each with its own
keep-alive http.client connection (requests split evenly over the threads).
Reports requests/s (requests / wall time of the whole timed phase) and p50/p99 latency
(per request, send to full body read).  With --sequential also measures concurrency 1
with the same request count (reported under "sequential").  Shuts Serve and Ray down.
The load generator shares the 2 cores with Ray's proxy, replica and raylet.
Prints ONE JSON line on stdout (last line); logs go to stderr.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fail(msg):
    print(f"ray_noop: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def drive(port, n, c, path="/"):
    """n requests over c threads, each with a keep-alive connection."""
    per = [n // c + (1 if i < n % c else 0) for i in range(c)]
    lats = [[] for _ in range(c)]
    errors = [0] * c
    barrier = threading.Barrier(c + 1)

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        out = lats[i]
        for _ in range(per[i]):
            t = time.perf_counter()
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or not body:
                    errors[i] += 1
            except Exception:  # noqa: BLE001
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            out.append(time.perf_counter() - t)
        conn.close()

    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(c)]
    for t in ths:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    all_l = sorted(x for l in lats for x in l)
    ok = len(all_l)
    return {
        "requests": n,
        "concurrency": c,
        "ok": ok,
        "errors": sum(errors),
        "wall_s": round(wall, 3),
        "rps": round(ok / wall, 1) if wall > 0 else None,
        "p50_ms": round(percentile(all_l, 0.50) * 1000, 2) if ok else None,
        "p99_ms": round(percentile(all_l, 0.99) * 1000, 2) if ok else None,
        "mean_ms": round(sum(all_l) / ok * 1000, 2) if ok else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sequential", action="store_true",
                    help="also measure concurrency 1 with the same request count")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    a = ap.parse_args()
    if a.requests < 1 or a.concurrency < 1:
        fail("need --requests >= 1 and --concurrency >= 1")

    try:
        import ray
        from ray import serve
    except Exception as e:  # noqa: BLE001
        fail(f"import failed ({e!r}); run scripts/compare/setup.sh")

    @serve.deployment(num_replicas=1, max_ongoing_requests=max(100, a.concurrency * 2))
    class Noop:
        async def __call__(self, request):
            return {"ok": True}

    # Ray's raylet/driver print shutdown notices on stdout: keep fd 1 clean for the JSON
    # line by pointing it at stderr while Ray runs (child processes inherit this too).
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    t0 = time.perf_counter()
    started = False
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024 * 1024, configure_logging=True,
                 logging_level="WARNING")
        started = True
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        serve.run(Noop.bind(), name="noop", route_prefix="/")
        # wait until the proxy routes to the replica
        deadline = time.time() + a.ready_timeout
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read()
                conn.close()
                if r.status == 200:
                    log(f"ready: {body!r}")
                    break
            except OSError:
                pass
            if time.time() > deadline:
                fail(f"Ray Serve not ready on 127.0.0.1:{a.port} after {a.ready_timeout}s")
            time.sleep(0.5)
        startup_s = time.perf_counter() - t0
        log(f"ray {ray.__version__} serve ready in {startup_s:.1f}s")

        drive(a.port, a.warmup, min(a.concurrency, a.warmup))
        res = drive(a.port, a.requests, a.concurrency)
        log(f"concurrency {a.concurrency}: {res}")
        seq = None
        if a.sequential:
            seq = drive(a.port, a.requests, 1)
            log(f"concurrency 1: {seq}")
    finally:
        if started:
            try:
                serve.shutdown()
            except Exception as e:  # noqa: BLE001
                log(f"serve.shutdown: {e!r}")
            ray.shutdown()
        sys.stdout.flush()
        os.dup2(real_stdout, 1)

    if res["ok"] == 0:
        fail(f"no request succeeded: {res}")
    out = {"tool": "ray-serve", "version": ray.__version__, **res,
           "startup_s": round(startup_s, 1)}
    if seq is not None:
        out["sequential"] = {k: seq[k] for k in ("requests", "ok", "errors", "rps", "p50_ms", "p99_ms", "mean_ms")}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
