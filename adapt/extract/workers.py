"""Extract stage Ray adapter: the read function and the encoder actor of the Ray Data pipeline."""

from __future__ import annotations

import json

import pyarrow as pa

from adapt import layout, schema
from adapt.config import Config
from adapt.encoders import build_encoder
from adapt.extract import readers
from adapt.extract.core import embed_batch
from adapt.storage import Storage

META = "_meta"


def read_shards(
    batch: pa.Table,
    store: Storage,
    shards: list,
    previous: dict,
    corpus: str,
    max_rows,
    output: str,
    wave: str,
    limits=None,
):
    for i in batch.column("i").to_pylist():
        shard = shards[i]
        known: dict[str, str] = {}
        if shard.key in previous and store.exists(previous[shard.key]):
            old = store.read_parquet(previous[shard.key])
            if schema.CONTENT_HASH in old.column_names:
                known = dict(
                    zip(
                        old.column(schema.ID).to_pylist(),
                        old.column(schema.CONTENT_HASH).to_pylist(),
                        strict=True,
                    )
                )
        rows = 0
        for table in readers.read_shard(store, shard, corpus, max_rows, limits):
            rows += table.num_rows
            yield readers.mark_reusable(table, known)
        if shard.format == "webdataset":  # every row has been handed on: record the count
            store.write_json(layout.wave_count(output, wave, shard.key), {"rows": rows})


class EmbedWorker:
    """Ray Data actor: loads the encoders once, then embeds batch after batch."""

    def __init__(self, config: Config, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        ext = config.extract
        self.required = config.required_modalities
        self.max_pixels = ext.max_image_pixels
        self.encoders = {
            modality: build_encoder(spec, modality, device=ext.device, dtype=ext.dtype)
            for modality, spec in sorted(config.encoders.items())
        }
        self.fingerprints = json.dumps(
            {m: e.fingerprint() for m, e in self.encoders.items()}, sort_keys=True
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        timings: dict[str, float] = {}
        out = embed_batch(self.encoders, table, self.required, timings, self.max_pixels)
        # One JSON cell per batch (the first row) carries fingerprints and timings to the writer.
        meta = json.dumps({"fingerprints": self.fingerprints, "timings": timings})
        return out.append_column(META, pa.array([meta] + [None] * (out.num_rows - 1), pa.string()))
