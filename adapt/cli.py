"""The `adapt` command: one subcommand per stage, each over the same YAML configuration.

    adapt extract --config FILE [--set key=value ...]
    adapt train   --config FILE      # a contrastive projection head over the embeddings
    adapt apply   --config FILE      # the latest head over every embeddings file (not in `run`)
    adapt score   --config FILE      # classifiers on raw vs PCA vs projected embeddings
    adapt run     --config FILE      # every stage in order, as `make run` does

The `jobs/*.py` entrypoints for `ray job submit` call the same `main`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from adapt.config import ConfigError, load_config

# Stage name -> "module:function"; each function takes a Config and returns a printable summary.
STAGES = {
    "extract": "adapt.extract.stage:main",
    "train": "adapt.train.stage:main",
    "apply": "adapt.apply.stage:main",
    "score": "adapt.score.stage:main",
    "nightly": "adapt.nightly.stage:main",
}
PIPELINE = ["extract", "train", "score"]


def _stage(name: str):
    module, _, func = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), func)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in [*STAGES, "run"]:
        s = sub.add_parser(
            name, help="all stages in order" if name == "run" else f"the {name} stage"
        )
        s.add_argument("--config", required=True, help="YAML job configuration")
        s.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set extract.batch_size=32 (repeatable)",
        )
        s.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: list[str] | None = None, only: str | None = None) -> int:
    args = parser().parse_args(argv if only is None else [only, *(argv or sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stages = PIPELINE if args.stage == "run" else [args.stage]
    for name in stages:
        summary = _stage(name)(config)
        print(json.dumps(summary, indent=2, default=str) if args.json else summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
