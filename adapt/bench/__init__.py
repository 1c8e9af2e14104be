"""Benchmarks: scripts that time a stage and print the figures (`make bench`); not tests."""

import json
import os


def save_report(path: str | None, report: dict) -> None:
    """Write a benchmark's figures as JSON when a path is given (the `--out` of each script)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2, default=str)
