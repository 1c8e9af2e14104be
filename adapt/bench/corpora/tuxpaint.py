"""Tux Paint stamps corpus: clip-art PNGs with one-line English captions, labelled by folder.

A second real image+text corpus whose images differ in style from emoji (larger drawings and
photos on transparent backgrounds, up to ~1000 px) and whose captions are short sentences
(``A duck.``). Source: the Debian package ``tuxpaint-stamps-default`` (pinned below), downloaded
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache, so no root install.

Rows: one per stamp that has a PNG and a caption file. id = path under ``stamps/`` without
extension (``animals/birds/duck``), text = the English (first, unprefixed) line of the caption
``.txt``, image = the PNG bytes as shipped, label = top-level folder (16 categories),
label_subcategory = first two folder levels (``animals/birds``; the category alone for stamps at
its top). A PNG over 1 MB would be re-encoded as a PNG of at most 256 px on its longer side; the
pinned version has none. Left out, and counted in the summary: SVG-only stamps (no SVG rasteriser
is a dependency), PNGs with no caption (the ``*_mirror`` pre-mirrored variants) and captions with
no image. Where a stamp has both a PNG and an SVG the PNG is used.

Run: ``python -m adapt.bench.corpora.tuxpaint --out DIR``
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

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

NAME = "tuxpaint"
PACKAGE = "tuxpaint-stamps-default"
VERSION = "2022.06.04-1"  # Debian 12 (bookworm)
# SHA256 of the .deb as listed in the bookworm Packages index; a rebuild from other bytes is refused.
DEB_SHA256 = "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34"
STAMPS_DIR = Path("usr/share/tuxpaint/stamps")
MAX_IMAGE_BYTES = 1_000_000  # larger PNGs are re-encoded, to keep rows small for readers
SHRUNK_SIDE_PX = 256  # longer side of a re-encoded image
BUILDER_VERSION = "1"
# Caption files hold the English caption on an unprefixed line and translations as "xx.utf8=...".
_TRANSLATION = re.compile(r"^[A-Za-z_@]+\.utf8=")

INFO = CorpusInfo(
    name=NAME,
    source=f"debian:{PACKAGE}={VERSION}",
    licence="GPL-2.0-or-later (Tux Paint stamps, (c) 2002-2022 Bill Kendrick and contributors)",
    builder_version=BUILDER_VERSION,
    homepage="https://tuxpaint.org/",
    notes="label = top-level stamp folder; label_subcategory = first two folder levels",
)


def deb_name() -> str:
    return f"{PACKAGE}_{VERSION}_all.deb"


def fetch(cache_dir: Path) -> Path:
    """The stamps folder of the pinned package, downloaded and unpacked into cache_dir once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / f"{PACKAGE}_{VERSION}"
    if (root / STAMPS_DIR).is_dir():
        return root / STAMPS_DIR
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} not found: build this corpus on Debian or Ubuntu, or unpack "
                f"{deb_name()} (from https://packages.debian.org/{PACKAGE}) into {root}"
            )
    deb = cache_dir / deb_name()
    if not deb.exists():
        cmd = ["apt-get", "download", f"{PACKAGE}={VERSION}"]
        done = subprocess.run(cmd, cwd=cache_dir, capture_output=True, text=True)
        if done.returncode != 0 or not deb.exists():
            raise RuntimeError(
                f"'{' '.join(cmd)}' failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}\n"
                "the package lists may be stale or missing: run 'apt-get update' and retry; if "
                f"version {VERSION} is still not offered (it is in Debian 12 bookworm), download "
                f"{deb_name()} from a Debian mirror into {cache_dir}"
            )
    found = hashlib.sha256(deb.read_bytes()).hexdigest()
    if found != DEB_SHA256:
        raise RuntimeError(
            f"{deb} has SHA256 {found}, expected {DEB_SHA256}: the download is damaged or not "
            "the pinned version; delete the file and rerun"
        )
    # Unpack next to the final name and rename, so an interrupted run leaves no half tree behind.
    staging = cache_dir / f".{root.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    done = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(staging)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"dpkg-deb -x {deb} failed: {done.stderr.strip()[-2000:]}; delete the file and rerun"
        )
    if not (staging / STAMPS_DIR).is_dir():
        raise RuntimeError(f"{deb} has no /{STAMPS_DIR}: is it {PACKAGE}?")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root / STAMPS_DIR


def english_caption(text: str) -> str | None:
    """The first non-empty line that is not a translation, stripped; None if there is none."""
    for line in text.splitlines():
        line = line.strip()
        if line and not _TRANSLATION.match(line):
            return line
    return None


def shrink_image(
    data: bytes, max_bytes: int = MAX_IMAGE_BYTES, side_px: int = SHRUNK_SIDE_PX
) -> bytes:
    """The bytes unchanged when at most max_bytes, else a PNG of at most side_px on its longer side."""
    if len(data) <= max_bytes:
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGBA")
        im.thumbnail((side_px, side_px), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rows_from_stamps(stamps: Path, skipped: Skipped) -> list[Row]:
    """Corpus rows, sorted by id, from an unpacked stamps folder."""
    by_stem: dict[str, set[str]] = {}
    for path in stamps.rglob("*"):
        if path.is_file() and path.suffix in (".png", ".svg", ".txt"):
            stem = path.relative_to(stamps).with_suffix("").as_posix()
            by_stem.setdefault(stem, set()).add(path.suffix)
    rows: list[Row] = []
    for stem in sorted(by_stem):
        kinds = by_stem[stem]
        if ".txt" not in kinds:
            skipped.add("image without a caption file", stem)
            continue
        if ".png" not in kinds:
            if ".svg" in kinds:
                skipped.add("SVG only (no rasteriser in the dependencies)", stem)
            else:
                skipped.add("caption without an image", stem)
            continue
        parts = stem.split("/")
        if len(parts) < 2:
            skipped.add("stamp outside a category folder", stem)
            continue
        caption = english_caption(
            (stamps / f"{stem}.txt").read_text(encoding="utf-8", errors="replace")
        )
        if not caption:
            skipped.add("no English caption line", stem)
            continue
        data = (stamps / f"{stem}.png").read_bytes()
        problem = check_image(data)
        if problem:
            skipped.add(problem, stem)
            continue
        small = shrink_image(data)
        if small is not data:
            skipped.change(f"re-encoded to {SHRUNK_SIDE_PX} px: over {MAX_IMAGE_BYTES} bytes", stem)
        rows.append(
            {
                ID: stem,
                TEXT: caption,
                IMAGE: small,
                LABEL: parts[0],
                "label_subcategory": "/".join(parts[:2]) if len(parts) > 2 else parts[0],
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
    """Download and unpack (once), read, split 80/20 per category and write the stamps corpus."""
    stamps = fetch(Path(cache_dir) if cache_dir else default_cache_dir(NAME))
    skipped = Skipped()
    rows = rows_from_stamps(stamps, skipped)
    return finish(rows, out_dir, INFO, skipped, num_files, max_rows, seed)


if __name__ == "__main__":
    run_cli(NAME, __doc__, build)
