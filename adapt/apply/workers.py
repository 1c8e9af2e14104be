"""Apply stage Ray adapter: an actor that loads the head once and projects file after file."""

from __future__ import annotations

import pyarrow as pa

from adapt import layout
from adapt.apply.core import project_table
from adapt.storage import Storage
from adapt.train.artifact import load_head


class ApplyWorker:
    """Ray Data actor: loads the head once, then projects and writes one embeddings file a call."""

    def __init__(self, store: Storage, head_uri: str, dest: str) -> None:
        self.store, self.dest = store, dest
        self.applied = load_head(head_uri, store)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for src in batch.column("file").to_pylist():
            dst = layout.projected_file(self.dest, src)
            table = project_table(self.applied, self.store.read_parquet(src))
            self.store.write_parquet(dst, table)
            rows.append({"file": src, "projected_file": dst, "rows": table.num_rows})
        return pa.Table.from_pylist(rows)
