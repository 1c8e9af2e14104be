"""Apply stage core: one embeddings table in, the same rows' projections out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapt import schema
from adapt.train.artifact import AppliedHead


def project_table(applied: AppliedHead, table: pa.Table) -> pa.Table:
    """id, label*, split and `projected_embedding` (null where a modality is missing)."""
    keep = [
        c
        for c in table.column_names
        if c == schema.ID or c == schema.SPLIT or c.startswith(schema.LABEL)
    ]
    out = table.select(keep)
    valid = np.ones(table.num_rows, dtype=bool)
    for m in applied.modalities:
        valid &= table.column(schema.embedding_column(m)).is_valid().to_numpy(zero_copy_only=False)
    z = np.zeros((table.num_rows, applied.out_dim), dtype=np.float32)
    if valid.any():
        z[valid] = applied(table.filter(pa.array(valid)))
    fsl = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float32()), applied.out_dim)
    column = pc.if_else(pa.array(~valid), pa.nulls(table.num_rows, fsl.type), fsl)
    return out.append_column(schema.PROJECTED_EMBEDDING, column)
