"""Deterministic benchmark sentences shared by the Python comparison scripts and
Shoal's Rust benchmark (which reads the identical texts from sentences.json).

    python3 scripts/compare/sentences.py          # rewrites sentences.json (32 + 32)

short(n): n sentences of 11-12 words each (14-17 WordPiece tokens with [CLS]/[SEP]).
long(n):  n passages of exactly 120 WordPiece tokens each (all-MiniLM-L6-v2 tokenizer,
          including [CLS]/[SEP]); each starts with a distinct numbered lead-in and
          continues with a fixed paragraph, so they differ but have near-equal length.
Pure Python, no dependencies, no randomness.
"""
import json
import os
import sys

_SUBJECTS = ["The old fisherman", "A young engineer", "My neighbour's cat", "The quiet librarian",
             "A tired courier", "The city council", "Our new teacher", "A curious child"]
_VERBS = ["carefully repaired", "slowly carried", "proudly painted", "quickly sold",
          "secretly borrowed", "happily cleaned", "patiently measured", "loudly described"]
_OBJECTS = ["the broken wooden boat near the harbour.", "a heavy box of books upstairs.",
            "the small red fence behind the school.", "three baskets of fresh apples today.",
            "an antique clock from the market square.", "the long hallway before the party.",
            "every window in the empty station.", "the strange map found in the attic."]

_PARAGRAPH = (
    "The river valley had been farmed for centuries, and every spring the villagers "
    "gathered to repair the stone walls that the winter floods had loosened. Children "
    "carried baskets of small rocks while their parents argued about the best way to "
    "stack the larger ones, and the oldest farmer always claimed that his grandfather "
    "had built the first wall with nothing but his hands and a borrowed ox. By evening "
    "the fields were ready for planting, the walls stood straight again, and everyone "
    "shared bread, cheese and cider under the chestnut trees near the old mill by the quiet river."
)
_NUMBERS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
            "sixteenth"]


def short(n):
    """n short sentences of 11-12 words: subject x verb x object, deterministic order."""
    out = []
    for i in range(n):
        s = _SUBJECTS[i % 8]
        v = _VERBS[(i // 8 + i) % 8]
        o = _OBJECTS[(i * 3 + i // 8) % 8]
        out.append(f"{s} {v} {o}")
    return out


def long(n):
    """n passages of ~120 tokens: numbered lead-in + the fixed paragraph."""
    out = []
    for i in range(n):
        num = _NUMBERS[i % 16]
        part = "morning" if i < 16 else "afternoon"
        out.append(f"Story {i + 1}, told on the {num} {part}: {_PARAGRAPH}")
    return out


def write_json(path=None, n=32):
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "sentences.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"short": short(n), "long": long(n)}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


if __name__ == "__main__":
    p = write_json()
    print(p, file=sys.stderr)
