"""LangGraph's side of `shoal bench graphs`: the overhead of a durable chain of 10 tiny steps.

    .bench-venv/bin/python scripts/compare/langgraph_chain.py [--steps 10] [--runs 200]
        [--warmup 5] [--threads 16] [--seconds 15] [--dir DIR] [--connections shared|per-thread]
        [--synchronous FULL|NORMAL]

A StateGraph of STEPS nodes chained START -> n1 -> ... -> nSTEPS -> END; each node does what
Shoal's `template` step does in the same benchmark (appends "x" to the previous node's text).
It is compiled with the SQLite checkpointer (langgraph-checkpoint-sqlite's SqliteSaver on a
file in a temporary folder) and invoked with durability="sync", so each step's checkpoint is
written and committed before the next step starts. SQLite is in WAL mode (SqliteSaver sets
it) with synchronous=FULL (Python's default: the WAL is fdatasynced at every commit), or
with --synchronous NORMAL (no sync at commit: a commit survives the process's death, not
necessarily the machine's). Every run has its own thread_id.

Sequential: WARMUP runs, then RUNS runs one after another; latency = invoke() call to return.
Concurrent: THREADS Python threads invoke runs back to back for SECONDS; runs/s = completed
runs / wall time. With --connections shared (the default) the threads share one SqliteSaver
on one connection (check_same_thread=False; SqliteSaver serialises its cursors with a lock,
as its documentation suggests); with per-thread, each thread has its own connection and
saver on the same file (SQLite then serialises the writers itself, with busy_timeout).

Logs on stderr; the last line of stdout is one JSON object.
"""
import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from importlib.metadata import version
from typing import TypedDict


def fail(msg):
    print(f"langgraph_chain.py: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
except Exception as e:  # noqa: BLE001 - any import failure means "not installed"
    fail(f"langgraph not importable ({e!r}); run scripts/compare/setup.sh")


class State(TypedDict):
    text: str


def step(state):
    return {"text": state["text"] + "x"}


def build(steps, saver):
    g = StateGraph(State)
    for i in range(1, steps + 1):
        g.add_node(f"n{i}", step)
    g.add_edge(START, "n1")
    for i in range(1, steps):
        g.add_edge(f"n{i}", f"n{i + 1}")
    g.add_edge(f"n{steps}", END)
    return g.compile(checkpointer=saver)


def connect(path, synchronous):
    conn = sqlite3.connect(path, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def invoke(app, steps):
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    out = app.invoke({"text": ""}, config, durability="sync")
    if out["text"] != "x" * steps:
        raise RuntimeError(f"unexpected output {out!r}")
    return config["configurable"]["thread_id"]


def pct(sorted_values, p):
    """Nearest rank, as the Rust side computes it."""
    if not sorted_values:
        return None
    return sorted_values[round((len(sorted_values) - 1) * p)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--dir", default=None, help="where the SQLite file goes (a new temporary folder by default)")
    ap.add_argument("--connections", choices=["shared", "per-thread"], default="shared")
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file (removed by default)")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="langgraph-bench-", dir=a.dir)
    path = os.path.join(tmp, "checkpoints.sqlite")
    conn = connect(path, a.synchronous)
    saver = SqliteSaver(conn)
    saver.setup()
    app = build(a.steps, saver)
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(conn.execute("PRAGMA synchronous").fetchone()[0])

    print(f"[langgraph] sequential: {a.warmup} warm-up runs, then {a.runs} runs of {a.steps} steps", file=sys.stderr)
    for _ in range(a.warmup):
        invoke(app, a.steps)
    lat = []
    t0 = time.perf_counter()
    last_thread = None
    for _ in range(a.runs):
        s = time.perf_counter()
        last_thread = invoke(app, a.steps)
        lat.append((time.perf_counter() - s) * 1e3)
    seq_wall = time.perf_counter() - t0
    lat.sort()
    checkpoints_per_run = conn.execute(
        "SELECT count(*) FROM checkpoints WHERE thread_id = ?", (last_thread,)
    ).fetchone()[0]
    writes_per_run = conn.execute("SELECT count(*) FROM writes WHERE thread_id = ?", (last_thread,)).fetchone()[0]

    print(f"[langgraph] concurrent: {a.threads} threads for {a.seconds:.0f} s ({a.connections} connection)", file=sys.stderr)
    done = [0] * a.threads
    conc_lat = [[] for _ in range(a.threads)]
    errors = []
    deadline = time.perf_counter() + a.seconds

    def worker(i):
        if a.connections == "shared":
            mine = app
        else:
            c = connect(path, a.synchronous)
            s = SqliteSaver(c)
            s.is_setup = True  # the tables exist; setup() again would need the write lock
            mine = build(a.steps, s)
        while time.perf_counter() < deadline:
            s0 = time.perf_counter()
            try:
                invoke(mine, a.steps)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(repr(e))
                continue
            conc_lat[i].append((time.perf_counter() - s0) * 1e3)
            done[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conc_wall = time.perf_counter() - t0
    all_conc = sorted(x for l in conc_lat for x in l)
    runs_total = conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
    conn.close()
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        json.dumps(
            {
                "tool": "langgraph",
                "version": version("langgraph"),
                "checkpointer": "langgraph-checkpoint-sqlite " + version("langgraph-checkpoint-sqlite"),
                "sqlite": sqlite3.sqlite_version,
                "journal_mode": journal,
                "synchronous": synchronous,
                "durability": "sync",
                "steps": a.steps,
                "checkpoints_per_run": checkpoints_per_run,
                "writes_per_run": writes_per_run,
                "sequential": {
                    "runs": a.runs,
                    "p50_ms": pct(lat, 0.5),
                    "p99_ms": pct(lat, 0.99),
                    "step_p50_ms": pct(lat, 0.5) / a.steps,
                    "step_p99_ms": pct(lat, 0.99) / a.steps,
                    "runs_per_s": a.runs / seq_wall,
                },
                "concurrent": {
                    "threads": a.threads,
                    "connections": a.connections,
                    "seconds": conc_wall,
                    "runs": sum(done),
                    "errors": len(errors),
                    "first_error": errors[0] if errors else None,
                    "runs_per_s": sum(done) / conc_wall,
                    "p50_ms": pct(all_conc, 0.5),
                    "p99_ms": pct(all_conc, 0.99),
                },
                "threads_in_db": runs_total,
                "file": path if a.keep else None,
            }
        )
    )


if __name__ == "__main__":
    main()
