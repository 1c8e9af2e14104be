"""Reading the embeddings the extract stage wrote, as numpy arrays, without Ray.

Used by the train stage's local mode, by the score stage and by users' own code. Only committed
files count: the manifest (written last) names them, so a reader never picks up a half-run.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapt import layout, schema
from adapt.storage import Storage, join


class EmbeddingsError(FileNotFoundError):
    """No complete embeddings where asked; the message says which stage to run."""


@dataclass
class Embeddings:
    ids: np.ndarray  # [N] str
    features: dict[str, np.ndarray]  # modality -> float32 [N, dim]
    columns: dict[str, list]  # label columns, split, content_hash, as stored (labels may be lists)
    manifest: dict

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features)

    def labels(self, column: str = schema.LABEL) -> list:
        if column not in self.columns:
            raise KeyError(f"no label column {column!r}; have {sorted(self.columns)}")
        return self.columns[column]

    def subset(self, index: np.ndarray) -> Embeddings:
        return Embeddings(
            self.ids[index],
            {m: x[index] for m, x in self.features.items()},
            {k: [v[i] for i in index] for k, v in self.columns.items()},
            self.manifest,
        )


def read_manifest(store: Storage, output: str) -> dict:
    manifest = store.read_json_or_none(layout.manifest(output))
    if manifest is None or not manifest.get("complete"):
        raise EmbeddingsError(
            f"no complete embeddings under {join(output, 'embeddings')}: run `adapt extract` "
            "with the same `output` first"
        )
    return manifest


def embedding_files(manifest: dict) -> list[str]:
    return [r["embeddings_file"] for r in manifest["shards"] if r.get("embeddings_file")]


def fixed_size_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size float list column (no nulls) -> float32 [N, dim], without a Python loop."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError("embedding column has null rows; filter them first")
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    # A column with nulls is stored as a variable-size list (see schema.storable).
    dim = (
        arr.type.list_size
        if pa.types.is_fixed_size_list(arr.type)
        else flat.size // max(1, len(arr))
    )
    return flat.reshape(-1, dim)


def load_embeddings(
    store: Storage,
    output: str,
    require_all: bool = True,
    *,
    features: bool = True,
    ids: Sequence[str] | None = None,
    files: Sequence[str] | None = None,
) -> Embeddings:
    """Every committed embedded row, in shard order.

    With `require_all`, rows missing an optional modality are dropped from the result (a head needs
    every input); the count dropped is in `manifest["dropped_incomplete"]`. `features=False`: ids
    and label columns only (each modality an [N, 0] array), for deciding which rows to read.
    `ids`: only these rows. `files`: only these of the manifest's files. Files are read one at a
    time and cut down as they come, so the driver never holds more than one beyond the result.
    """
    manifest = read_manifest(store, output)
    check_files(store, output, manifest)
    names = embedding_files(manifest)
    if files is not None:
        wanted_files = set(files)
        names = [f for f in names if f in wanted_files]
    elif not names:
        raise EmbeddingsError(f"the manifest under {output} names no embedded rows")
    modalities = sorted(manifest["schema"])
    emb_cols = [schema.embedding_column(m) for m in modalities]
    wanted = None if ids is None else pa.array(list(map(str, ids)), pa.string())
    tables, dropped = [], 0
    for f in names:
        table = store.read_parquet(f)
        if wanted is not None:
            table = table.filter(pc.is_in(table.column(schema.ID), value_set=wanted))
        if require_all:
            keep = np.ones(table.num_rows, dtype=bool)
            for c in emb_cols:
                keep &= table.column(c).is_valid().to_numpy(zero_copy_only=False)
            dropped += int((~keep).sum())
            table = table.filter(pa.array(keep))
        if not features:
            table = table.drop_columns([c for c in emb_cols if c in table.column_names])
        tables.append(table)
    if require_all:
        manifest = {**manifest, "dropped_incomplete": dropped}
    if not tables:
        return Embeddings(
            np.zeros(0, dtype=object),
            {m: np.zeros((0, 0), dtype=np.float32) for m in modalities},
            {},
            manifest,
        )
    table = pa.concat_tables(tables, promote_options="permissive")
    del tables
    n = table.num_rows
    arrays = {
        m: fixed_size_to_numpy(table.column(c)) if features else np.zeros((n, 0), np.float32)
        for m, c in zip(modalities, emb_cols, strict=True)
    }
    columns = {
        c: table.column(c).to_pylist()
        for c in table.column_names
        if c.startswith(schema.LABEL) or c in (schema.SPLIT, schema.CONTENT_HASH)
    }
    row_ids = np.array(table.column(schema.ID).to_pylist(), dtype=object)
    if pc.count_distinct(table.column(schema.ID)).as_py() != n:
        raise EmbeddingsError(
            f"the embeddings under {output} repeat ids; run `adapt extract` again on this output "
            "(it moves repeated ids to rejects/ as duplicate_id)"
        )
    return Embeddings(row_ids, arrays, columns, manifest)


def check_files(store: Storage, output: str, manifest: dict) -> None:
    """Raise EmbeddingsError unless every file the manifest names is there with the size it was
    committed with (one listing of the folder that holds them): a file lost since, or replaced by a run in
    progress, would give rows of another state than the manifest's."""
    named = [r["embeddings_file"] for r in manifest["shards"] if r.get("embeddings_file")]
    sizes: dict[str, int] = {}
    for folder in sorted({posixpath.dirname(u) for u in named}):  # one listing in the usual case
        sizes.update(store.file_sizes(folder, (".parquet",)))
    for record in manifest["shards"]:
        uri, size = record.get("embeddings_file"), record.get("embeddings_bytes")
        if uri is None:
            continue
        if uri not in sizes or (size is not None and sizes[uri] != size):
            raise EmbeddingsError(
                f"{uri} is {'gone' if uri not in sizes else 'not the file the manifest names'}: "
                "an extract run is writing to this output, or the file was removed. Wait for "
                "the run, or run `adapt extract` again, which restores it"
            )
