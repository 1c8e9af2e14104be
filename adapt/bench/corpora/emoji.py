"""Emoji corpus: Noto emoji images with their names, labelled by emoji category.

A small, real image+text corpus with a clean label hierarchy (9 categories, ~100 subcategories)
that ships in the repository as the demo corpus and runs end to end in seconds. Source: the npm
package ``emoji-datasource-google`` (pinned below), whose ``emoji.json`` gives each emoji's name,
category and subcategory and whose ``img/google/64/`` holds one 64x64 PNG per emoji (the package
has no other single-image size; the rest are sprite sheets).

Rows: id = short name (e.g. ``flag-eg``), text = the emoji's name lowercased (``egypt flag``),
image = the PNG bytes as shipped, label = category, label_subcategory = subcategory.
Left out, and counted in the summary: the "Component" category (5 skin-tone swatches, plain colour
squares with no subject, too few for a stratified split) and the skin-tone variants of each emoji
(same name and labels as the base emoji, so they would be near-duplicates across train and test).

Run: ``python -m adapt.bench.corpora.emoji --out adapt/data/demo/emoji``
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from adapt.bench.corpora.common import (
    DEFAULT_NUM_FILES,
    BuildSummary,
    CorpusInfo,
    Row,
    Skipped,
    check_image,
    default_cache_dir,
    finish,
    run_cli,
)
from adapt.schema import ID, IMAGE, LABEL, TEXT

NAME = "emoji"
PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
# npm's own integrity string for the pinned tarball; a rebuild from other bytes is refused.
INTEGRITY = "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
IMAGE_DIR = "package/img/google/64/"
DROPPED_CATEGORIES = ("Component",)
BUILDER_VERSION = "1"

INFO = CorpusInfo(
    name=NAME,
    source=f"npm:{PACKAGE}@{VERSION}",
    licence="images: Apache-2.0 (Noto Emoji, Google); emoji data: MIT (emoji-data, Cal Henderson)",
    builder_version=BUILDER_VERSION,
    homepage="https://github.com/iamcal/emoji-data",
    notes="64 px PNG per emoji; label = category, label_subcategory = subcategory",
)


def tarball_name() -> str:
    return f"{PACKAGE}-{VERSION}.tgz"


def integrity_of(path: Path) -> str:
    """npm's integrity string (sha512, base64) for a file."""
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def fetch(cache_dir: Path) -> Path:
    """The pinned package tarball, downloaded with ``npm pack`` into cache_dir on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / tarball_name()
    if not path.exists():
        if shutil.which("npm") is None:
            raise RuntimeError(
                f"npm not found: install Node.js and npm (e.g. apt-get install npm), or put "
                f"{tarball_name()} from https://registry.npmjs.org/{PACKAGE} into {cache_dir}"
            )
        cmd = ["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.exists():
            raise RuntimeError(
                f"'{' '.join(cmd)}' failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}\n"
                "check that the npm registry is reachable (npm ping) or set a mirror with "
                "'npm config set registry URL'"
            )
    found = integrity_of(path)
    if found != INTEGRITY:
        raise RuntimeError(
            f"{path} has integrity {found}, expected {INTEGRITY}: the download is damaged or "
            "not the pinned version; delete the file and rerun"
        )
    return path


def read_package(tgz: Path) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(entries of emoji.json, PNG bytes by file name under img/google/64/) from the tarball."""
    entries: list[dict[str, Any]] | None = None
    images: dict[str, bytes] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:  # one sequential pass: the gzip stream is not seekable cheaply
            if not member.isfile():
                continue
            if member.name == "package/emoji.json":
                entries = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
            elif member.name.startswith(IMAGE_DIR) and member.name.endswith(".png"):
                images[member.name[len(IMAGE_DIR) :]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if entries is None:
        raise RuntimeError(f"{tgz} has no package/emoji.json: is it {PACKAGE}@{VERSION}?")
    return entries, images


def rows_from_package(
    entries: list[dict[str, Any]], images: dict[str, bytes], skipped: Skipped
) -> list[Row]:
    """Corpus rows, sorted by id, from emoji.json entries and the image files."""
    rows: list[Row] = []
    for e in entries:
        short = e["short_name"]
        for variant in sorted(e.get("skin_variations") or {}):
            skipped.add(
                "skin-tone variant (same name and labels as its base emoji)", f"{short}/{variant}"
            )
        if e["category"] in DROPPED_CATEGORIES:
            skipped.add(f"category {e['category']} (skin-tone swatches, too few to split)", short)
            continue
        if not e.get("has_img_google"):
            skipped.add("no Google image", short)
            continue
        data = images.get(e["image"])
        if data is None:
            skipped.add("image file missing from the package", short)
            continue
        problem = check_image(data)
        if problem:
            skipped.add(problem, short)
            continue
        rows.append(
            {
                ID: short,
                TEXT: (e.get("name") or short.replace("_", " ")).lower(),
                IMAGE: data,
                LABEL: e["category"],
                "label_subcategory": e["subcategory"],
            }
        )
    rows.sort(key=lambda r: r[ID])
    return rows


def build(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    num_files: int = DEFAULT_NUM_FILES,
    max_rows: int | None = None,
    seed: int = 0,
) -> BuildSummary:
    """Download (once), read, split 80/20 per category and write the emoji corpus."""
    tgz = fetch(Path(cache_dir) if cache_dir else default_cache_dir(NAME))
    entries, images = read_package(tgz)
    skipped = Skipped()
    rows = rows_from_package(entries, images, skipped)
    return finish(rows, out_dir, INFO, skipped, num_files, max_rows, seed)


if __name__ == "__main__":
    run_cli(NAME, __doc__, build)
