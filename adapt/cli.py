"""The `adapt` command: one subcommand per stage, each over the same YAML configuration.

    adapt extract --config FILE [--set key=value ...]
    adapt train   --config FILE      # a contrastive projection head over the embeddings
    adapt apply   --config FILE      # the latest head over every embeddings file (not in `run`)
    adapt score   --config FILE      # classifiers on raw vs PCA vs projected embeddings
    adapt run     --config FILE      # every stage in order, as `make run` does
    adapt config show --config FILE  # the configuration as resolved, secrets masked
    adapt --version

Every stage takes `--json` (one JSON document on stdout: the stage's summary, or for `run` one
object with a summary per stage) and `-q` / `-v` (warnings only / debug logging).
The `jobs/*.py` entrypoints for `ray job submit` call the same `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import re
import sys
import time

import yaml

from adapt import __version__
from adapt.config import ConfigError, load_config
from adapt.rayutil import is_secret

log = logging.getLogger("adapt")

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
    p.add_argument("--version", action="version", version=f"adapt {__version__}")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def config_options(s: argparse.ArgumentParser) -> None:
        s.add_argument("--config", required=True, help="YAML job configuration")
        s.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set extract.batch_size=32 (repeatable)",
        )

    for name in [*STAGES, "run"]:
        s = sub.add_parser(
            name, help="all stages in order" if name == "run" else f"the {name} stage"
        )
        config_options(s)
        s.add_argument("--json", action="store_true", help="print the summary as one JSON document")
        level = s.add_mutually_exclusive_group()
        level.add_argument(
            "-q", "--quiet", action="store_true", help="log warnings and errors only"
        )
        level.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    c = sub.add_parser("config", help="the configuration")
    show = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_options(show.add_parser("show", help="print the resolved configuration (YAML)"))
    return p


# Keys whose values are never printed: the names `rayutil.is_secret` keeps from workers, and API or
# access keys; and credentials inside a URL (scheme://user:secret@host).
_KEY_SECRET = re.compile(r"(api_?key|access_?key)", re.I)
_URL_SECRET = re.compile(r"(://[^/:@]+:)[^/@]+@")


def masked(value, key: str = ""):
    """`value` (a config as plain data) with secrets replaced by "***"."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        if (is_secret(key) or _KEY_SECRET.search(key)) and value:
            return "***"
        return _URL_SECRET.sub(r"\1***@", value)
    return value


def as_json(summary) -> dict:
    """A stage's summary as plain data: its fields, a score report cut to its decisions (the
    whole report is report.json in the report folder)."""
    if not dataclasses.is_dataclass(summary):
        return {"summary": str(summary)}
    out = dataclasses.asdict(summary)
    report = out.pop("report", None)
    if isinstance(report, dict):
        out["recommendation"] = report.get("recommendation")
        out["pair_verdict"] = report.get("pair_verdict")
    return out


class ConsoleFormatter(logging.Formatter):
    """Progress and results as plain lines; warnings and errors say so; -v adds time and
    logger name to every line."""

    def __init__(self, verbose: bool):
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s" if verbose else None)
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return super().format(record)
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def _logging(level: int) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(ConsoleFormatter(level <= logging.DEBUG))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None, only: str | None = None) -> int:
    args = parser().parse_args(argv if only is None else [only, *(argv or sys.argv[1:])])
    level = (
        logging.WARNING
        if getattr(args, "quiet", False)
        else logging.DEBUG
        if getattr(args, "verbose", False)
        else logging.INFO
    )
    _logging(level)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.stage == "config":
        print(yaml.safe_dump(masked(config.model_dump(mode="json")), sort_keys=False), end="")
        return 0
    stages = PIPELINE if args.stage == "run" else [args.stage]
    summaries = {}
    for i, name in enumerate(stages, 1):
        tag = f"[{i}/{len(stages)}] {name}" if len(stages) > 1 else name
        log.info("%s ...", tag)
        t0 = time.perf_counter()
        summary = _stage(name)(config)
        if args.json:
            summaries[name] = as_json(summary)
        else:
            print(summary.describe(), flush=True)
        log.info("%s done in %.1f s", tag, time.perf_counter() - t0)
    if args.json:
        document = summaries if args.stage == "run" else summaries[args.stage]
        print(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
