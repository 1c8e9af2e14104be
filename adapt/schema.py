"""Column names and Arrow schemas, defined once.

Every stage reads and writes through these names; a corpus or an embeddings file that lacks a
required column is rejected at read time with a message that names the column.
"""

from __future__ import annotations

import pyarrow as pa

# Corpus columns (input).
ID = "id"
TEXT = "text"
IMAGE = "image"  # encoded PNG/JPEG/WebP bytes
IMAGE_PATH = "image_path"  # relative to the corpus root, or a URI
LABEL = "label"  # string, or list of strings for multi-label tasks
SPLIT = "split"  # optional: "train", "val", "test", ...
CONTENT_HASH = "content_hash"  # of id, text and image bytes: what incremental runs compare

MODALITIES = ("text", "image")


def embedding_column(modality: str) -> str:
    """Name of the fixed-size float list column that holds one modality's embeddings."""
    return f"{modality}_embedding"


# The apply stage's output column: a head's projection of a row's embeddings.
PROJECTED_EMBEDDING = "projected_embedding"


# Rejects (rows that could not be embedded).
REASON = "reason"  # one of adapt.extract.validate.REASONS
DETAIL = "detail"  # what about the row, when there is more to say
STAGE = "stage"

REJECTS_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(DETAIL, pa.string(), nullable=True),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


def storable(table: pa.Table) -> pa.Table:
    """Make a table safe to write as Parquet.

    A fixed-size list column holding nulls (an optional modality a row lacks) does not read back
    from Parquet with pyarrow 25 ("Expected all lists to be of size=N"), so such a column is stored
    as a variable-size list; columns without nulls keep their fixed size.
    """
    for i, field in enumerate(table.schema):
        if pa.types.is_fixed_size_list(field.type) and table.column(i).null_count:
            table = table.set_column(
                i, field.name, table.column(i).cast(pa.list_(field.type.value_type))
            )
    return table
