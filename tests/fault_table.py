"""The fault suite's table: `python -m tests.fault_table out/faults/cases.jsonl` prints, as
Markdown, one row per case that passed and recorded its figures (`record` in test_faults.py)."""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("case", "case"),
    ("injects", "what it injects"),
    ("invariant", "invariant"),
    ("rows_in", "rows in"),
    ("embedded", "embedded"),
    ("rejected", "rejected"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("wall_s", "wall s"),
]


def table(cases: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for c in cases:
        lines.append("| " + " | ".join(str(c.get(k, "-")) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(table([json.loads(line) for line in f if line.strip()]))
