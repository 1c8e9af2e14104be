"""Typed job configuration: one YAML file, loaded into strict pydantic models.

Every stage reads the same file: the keys a user always sets (`corpus`, `output`, `encoders`) sit at
the top level, and each stage has a section named after it (`extract:`, `train:`, ...). Unknown keys
are rejected with the list of valid ones, and every problem in a file is reported at once, each with
the dotted key to change. `--set key=value` overrides apply before validation, so they are checked
the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapt import encoders as encoder_registry

Modality = Literal["text", "image"]


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message lists every problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Strict):
    """Object storage settings. Credentials come from the usual AWS chain and are never stored here."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto, ...); None means AWS itself."
    )
    region: str | None = None
    anon: bool = Field(False, description="Anonymous access (public buckets).")


class RayConfig(Strict):
    address: str | None = Field(
        None,
        description="Cluster to join. None: the cluster this job was submitted to, else a local one.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None: all).")
    object_store_memory_mb: int | None = Field(
        None, ge=75, description="Object store cap of a local Ray, in MiB."
    )


class EncoderSpec(Strict):
    """One frozen encoder: a registry name and how to pool and store its output."""

    name: str
    pooling: Literal["cls", "mean", "last", "pooled"] | None = Field(
        None, description="Token pooling for hf: models; None picks the model's usual one."
    )
    max_length: int = Field(128, ge=1, le=8192, description="Text truncation, in tokens.")
    normalize: bool = Field(True, description="L2-normalise each embedding.")
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Image models on CPU run about 8x faster through ONNX Runtime than eager torch "
        "(same outputs to 1e-5); auto picks onnx on CPU for timm/torchvision models, torch elsewhere.",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        encoder_registry.parse_name(name)  # raises ValueError listing the valid forms
        return name


class ExtractConfig(Strict):
    format: Literal["auto", "parquet", "webdataset", "folder"] = Field(
        "auto", description="Corpus format; auto looks at the files under `corpus`."
    )
    manifest: str | None = Field(
        None,
        description="For format=folder: manifest file (JSONL or CSV) relative to the corpus root.",
    )
    batch_size: int = Field(64, ge=1, le=65536, description="Rows per encoder forward pass.")
    num_workers: int = Field(1, ge=1, description="Encoder actors (one model copy each).")
    num_cpus_per_worker: float = Field(1.0, gt=0)
    num_gpus_per_worker: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(
        None, ge=1, description="Intra-op threads per encoder actor (None: one per CPU asked)."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Compute dtype on GPU; CPU always runs float32."
    )
    required_modalities: list[Modality] | None = Field(
        None,
        description="Rows missing one of these are rejected; None: every configured modality.",
    )
    max_reject_fraction: float = Field(
        0.05, ge=0, le=1, description="Fail the job when more than this share of rows is rejected."
    )
    shards_per_wave: int = Field(
        64, ge=1, description="Input shards committed together; a killed run redoes at most one wave."
    )
    max_rows_per_shard: int | None = Field(
        None, ge=1, description="Stop after this many rows per input shard (smoke runs)."
    )


class Config(Strict):
    """A whole job configuration; each stage reads the top-level keys and its own section."""

    corpus: str = Field(description="URI of the input corpus (local path or s3://bucket/prefix).")
    output: str = Field(description="URI of the root every stage writes under.")
    encoders: dict[Modality, EncoderSpec] = Field(
        description="Modality -> encoder, e.g. {text: 'hf:DIR', image: 'timm:ARCH@WEIGHTS'}."
    )
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    extract: ExtractConfig = ExtractConfig()

    @field_validator("encoders", mode="before")
    @classmethod
    def _encoder_shorthand(cls, value: Any) -> Any:
        # `text: hf:DIR` is shorthand for `text: {name: hf:DIR}`.
        if isinstance(value, dict):
            return {k: {"name": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.encoders:
            raise ValueError("encoders: name at least one modality, e.g. {text: minilm-l6}")
        required = self.extract.required_modalities or []
        missing = [m for m in required if m not in self.encoders]
        if missing:
            raise ValueError(
                f"extract.required_modalities names {missing} which have no encoder; "
                f"configured: {sorted(self.encoders)}"
            )
        return self

    @property
    def required_modalities(self) -> list[str]:
        return list(self.extract.required_modalities or sorted(self.encoders))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (`1`, `true`, `[a, b]`)."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set extract.batch_size=32")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at `loc` inside `model`, for 'unknown key' messages."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            args = getattr(annotation, "__args__", ())
            nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if not nested:
                return []
            model = nested[0]
    return sorted(model.model_fields)


def format_errors(error: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source}: {error.error_count()} problem(s) in the configuration:"]
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc)
            hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
            lines.append(f"  - {where}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"  - {where}: required, please set it")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  - {where}: {msg}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Load, override and validate a configuration; raise ConfigError listing every problem."""
    source = str(path) if path else "<config>"
    if data is None:
        if path is None:
            raise ConfigError("no configuration: pass --config FILE")
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    data = apply_overrides(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, Config, source)) from e
