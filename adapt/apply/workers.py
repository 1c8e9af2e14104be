"""Apply stage Ray adapter: an actor that loads the head once and projects file after file."""

from __future__ import annotations

import json

import pyarrow as pa

from adapt import layout
from adapt.apply.core import project_table
from adapt.storage import Storage
from adapt.train.artifact import load_head


class ApplyWorker:
    """Ray Data actor: loads the head once, then projects and writes one embeddings file a call,
    its commit record after it."""

    def __init__(self, store: Storage, head_uri: str, dest: str) -> None:
        self.store, self.dest = store, dest
        self.applied = load_head(head_uri, store)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for item in batch.to_pylist():
            src = item["file"]
            dst = layout.projected_file(self.dest, src)
            table = project_table(self.applied, self.store.read_parquet(src))
            record = {
                "file": src,
                "projected_file": dst,
                "rows": table.num_rows,
                "bytes": self.store.write_parquet(dst, table),
                "source": json.loads(item["source"]),
            }
            # Last: a projected file counts as done only with its record.
            self.store.write_json(layout.projected_commit(self.dest, src), record)
            rows.append({"record": json.dumps(record)})
        return pa.Table.from_pylist(rows)
