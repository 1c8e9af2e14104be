"""Typed job configuration: one YAML file, loaded into strict pydantic models.

Every stage reads the same file: the keys a user always sets (`corpus`, `output`, `encoders`) sit at
the top level, and each stage has a section named after it (`extract:`, `train:`, ...). Unknown keys
are rejected with the list of valid ones, and every problem in a file is reported at once, each with
the dotted key to change. `--set key=value` overrides apply before validation, so they are checked
the same way.
"""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from adapt import classifiers
from adapt import encoders as encoder_registry

Modality = Literal["text", "image"]


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message lists every problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys that were renamed: old name -> new name. A config that still uses an old name is
    # refused with the new one, rather than with a bare "unknown key".
    RENAMED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in cls.RENAMED if k in data]
            if old:
                raise ValueError(
                    "; ".join(f"{k} is now called {cls.RENAMED[k]}: rename the key" for k in old)
                )
        return data


class StorageConfig(Strict):
    """Object storage settings. Credentials come from the usual AWS chain and are never stored here."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto, ...); None means AWS itself."
    )
    region: str | None = None
    anon: bool = Field(False, description="Anonymous access (public buckets).")
    max_attempts: int = Field(
        10,
        ge=1,
        le=100,
        description="Attempts of one S3 request on a transient error (throttling, a 5xx, a reset "
        "connection), with backoff: botocore's adaptive retry mode and s3fs's own retries. Past "
        "them the error fails the task (Ray retries it) and never turns a row into a reject.",
    )


class RayConfig(Strict):
    address: str | None = Field(
        None,
        description="Cluster to join. None: the cluster this job was submitted to, else a local one.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None: all).")
    object_store_memory_mb: int | None = Field(
        None, ge=75, description="Object store cap of a local Ray, in MiB."
    )
    forward_credentials: bool = Field(
        False,
        description="Also pass the driver's AWS and Hugging Face secrets (AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN, HF_TOKEN, ...) to the workers' runtime environment, which Ray logs "
        "on every node and shows in job info. Off: workers get credentials the way their nodes "
        "do (instance role, IRSA, their own environment); only non-secret settings travel.",
    )
    console: bool | None = Field(
        None,
        description="Ray's own output on the driver's console: the workers' logs, Ray Data's "
        "progress bars and its execution messages. None: on when joining a cluster (a job's log "
        "is its driver's output), off for a local Ray, whose logs stay in its session folder "
        "(printed at start-up).",
    )


class EncoderSpec(Strict):
    """One frozen encoder: a registry name and how to pool and store its output."""

    name: str
    pooling: Literal["cls", "mean", "last", "pooled"] | None = Field(
        None,
        description="Token pooling for hf: models; None takes the model's own (its "
        "sentence-transformers pooling config; mean for text without one, CLS for vision).",
    )
    max_length: int | None = Field(
        None,
        ge=1,
        le=8192,
        description="Text truncation, in tokens; None takes the model's own (sentence-transformers' "
        "max_seq_length, else the tokenizer's maximum, else 512).",
    )
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
    shards_per_wave: int | None = Field(
        None,
        ge=1,
        description="None: every pending shard in one streaming dataset, each committed as soon "
        "as its last row is written. N: streams of N shards one after another (the encoders "
        "idle while a stream drains; for very many shards, it bounds one plan's size).",
    )
    decode_num_cpus: float | None = Field(
        None,
        gt=0,
        le=256,
        description="CPUs reserved by each decode task (decode, check, resize, tokenise); None: "
        "0.5, or 0.45 where that equals another stage's. It must differ from the read tasks' "
        "and, without a GPU, the encoders': Ray Data fuses operators of equal resources into "
        "one task, which would put decode back in series with the read or the forward.",
    )
    decode_concurrency: int | None = Field(
        None,
        ge=1,
        description="Most decode tasks at once; None: as many as the free CPUs allow.",
    )
    decode_batch_size: int = Field(
        64, ge=1, le=65536, description="Rows per call of the decode step."
    )
    max_rows_per_shard: int | None = Field(
        None, ge=1, description="Stop after this many rows per input shard (smoke runs)."
    )
    num_cpus_per_task: float = Field(
        0.25,
        gt=0,
        le=256,
        description="CPUs reserved by each read, write, count and commit task. Fractional: they "
        "wait on storage more than they compute, and whole CPUs for them would starve the "
        "encoder actors on a small node.",
    )
    lease_ttl_s: float = Field(
        600,
        gt=0,
        description="The run's lease on its output expires this long after its last renewal "
        "(renewed every third of it while the driver lives), so a killed run frees the output.",
    )
    wait_for_lease_s: float = Field(
        0, ge=0, description="Wait this long for another extract run on the same output."
    )
    max_image_bytes: int = Field(
        64 * 2**20, ge=1, description="An image file or cell over this many bytes is too_large."
    )
    max_image_pixels: int = Field(
        100_000_000,
        ge=1,
        description="An image over this many pixels (width x height, read from its header before "
        "decoding) is too_large: the decompression-bomb guard.",
    )
    image_roots: list[str] = Field(
        default_factory=list,
        description="Where `image_path` may point besides the corpus root (prefixes: a folder or "
        "s3://bucket/prefix). Any other path is rejected as outside_corpus.",
    )

    @property
    def decode_cpus(self) -> float:
        """decode_num_cpus, or its default: 0.5 unless that would fuse it with another stage."""
        if self.decode_num_cpus is not None:
            return self.decode_num_cpus
        taken = {self.num_cpus_per_task}
        if not self.num_gpus_per_worker:
            taken.add(self.num_cpus_per_worker)
        return 0.5 if 0.5 not in taken else 0.45 if 0.45 not in taken else 0.55

    @model_validator(mode="after")
    def _stages_stay_apart(self) -> ExtractConfig:
        if self.decode_num_cpus is None:
            return self
        if self.decode_num_cpus == self.num_cpus_per_task:
            raise ValueError(
                f"extract.decode_num_cpus ({self.decode_num_cpus}) equals "
                "extract.num_cpus_per_task: Ray Data would fuse reading and decoding into one "
                "task per shard; give them different values"
            )
        if not self.num_gpus_per_worker and self.decode_num_cpus == self.num_cpus_per_worker:
            raise ValueError(
                f"extract.decode_num_cpus ({self.decode_num_cpus}) equals "
                "extract.num_cpus_per_worker: Ray Data would fuse decoding into the encoder "
                "actors, in series with the forward; give them different values"
            )
        return self


# The authors' recipe (arXiv 2502.02048, as their code runs it): the "paper" preset fills these in; head shape comes from
# heads.paper_spec (hidden min(d // 2, 16), 128 outputs, no normalisation, no dropout).
PAPER_RECIPE: dict[str, Any] = {
    "loss": "pairwise_bce",
    "temperature": 0.1,
    "input_norm": "none",
    "sampler": "shuffle",
    "batch_size": 128,
    "epochs": 10,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "patience": None,
    "early_stopping_fraction": 0.2,
    "seed": 42,
    "cross_modal_weight": 0.0,
}
# Head-shape keys that the paper preset fixes, with the values it implies (hidden_dims and
# out_dim are ignored by it, so their defaults pass). Any other value next to `preset: paper` is
# an error; the implied values are accepted so that a dumped config validates again.
PAPER_FIXED_SHAPE: dict[str, Any] = {
    "hidden_dims": [256],
    "out_dim": 128,
    "dropout": 0.0,
    "normalize": False,
    "skip_pca": 0,
}


MAX_TRIALS = 256
AUTO_FOLDS = 3
# Head settings a search may vary (`train.search.grid`); resources, data and bookkeeping keys
# may not, and neither may `search` itself.
SEARCHABLE = (
    "mode",
    "hidden_dims",
    "out_dim",
    "dropout",
    "skip_pca",
    "normalize",
    "input_norm",
    "loss",
    "temperature",
    "margin",
    "cross_modal_weight",
    "sampler",
    "classes_per_batch",
    "batch_size",
    "epochs",
    "lr",
    "weight_decay",
)


class SearchConfig(Strict):
    """Hyper-parameter selection for the head, on rows of the training set the head never fits.

    Every combination of `grid` is fitted on the training rows less a stratified hold-out (by a
    hash of the row id), the hold-out rows are projected, and cheap probe classifiers fitted on the
    projected fit rows score them (macro-F1, averaged over the probes). The best combination (the
    first listed on a tie) is then fitted on all training rows. `adapt.train.search` has the details.
    """

    grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {"temperature": [0.1, 0.2], "dropout": [0.0, 0.3]},
        description="Train keys and the values to try; every combination is a trial. Empty: no "
        "search.",
    )
    RENAMED: ClassVar[dict[str, str]] = {"holdout": "holdout_fraction"}

    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the training rows held out to score trials."
    )
    folds: int | None = Field(
        None,
        ge=1,
        le=10,
        description="1: one hold-out of `holdout_fraction`; k >= 2: k-fold over the training rows, every "
        "trial fitted k times and scored on all of them (k times the cost, less noise). None: "
        "3-fold when one hold-out would hold fewer than `min_held` rows, else one hold-out.",
    )
    min_held: int = Field(
        1000,
        ge=1,
        description="folds: None switches to 3-fold below this many held-out rows: a macro-F1 "
        "on a few hundred rows is too noisy to tell the trials apart.",
    )
    probes: list[str] = Field(
        ["knn", "logreg"], min_length=1, description="Classifiers that score a trial."
    )
    max_rows: int = Field(
        20000,
        ge=10,
        description="Search on at most this many training rows (a stratified sample by id "
        "hash); the chosen settings then fit on all of them.",
    )
    min_rows: int = Field(
        50,
        ge=4,
        description="With fewer training rows, no search: the settings as given are used.",
    )
    cpus_per_trial: float = Field(
        1.0, gt=0.0, le=256.0, description="CPUs reserved per Ray Tune trial (the train job)."
    )

    @field_validator("probes")
    @classmethod
    def _known_probes(cls, names: list[str]) -> list[str]:
        return _known_classifiers(names)

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        bad = sorted(k for k in grid if k not in SEARCHABLE)
        if bad:
            raise ValueError(f"cannot search over {bad}; searchable keys are {list(SEARCHABLE)}")
        empty = sorted(k for k, v in grid.items() if not v)
        if empty:
            raise ValueError(f"grid keys {empty} list no values")
        return grid

    def n_folds(self, n_rows: int) -> int:
        """How many fits per trial on `n_rows` search rows (1: one hold-out)."""
        if self.folds is not None:
            return self.folds
        return 1 if self.holdout_fraction * n_rows >= self.min_held else AUTO_FOLDS

    @property
    def n_trials(self) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n if self.grid else 0


class TrainConfig(Strict):
    """The train stage: a contrastive projection head over the extracted embeddings.

    The defaults (per-modality supervised-contrastive heads with dropout, class-balanced batches
    and the PCA skip branch) are what `make bench-quality` measures on the real corpora; the
    `paper` preset reproduces the authors' recipe instead.
    """

    RENAMED: ClassVar[dict[str, str]] = {"val_fraction": "early_stopping_fraction"}

    preset: Literal["paper"] | None = Field(
        None,
        description="paper: the authors' exact recipe (pairwise BCE, T=0.1, unnormalised, hidden "
        "min(d/2, 16), 128 outputs, Adam lr 1e-3, batch 128, 10 epochs, no early stopping). "
        "Training keys set next to it still apply; head-shape keys are fixed by it.",
    )
    # -- head --
    mode: Literal["single", "per_modality"] = Field(
        "per_modality",
        description="per_modality: one head per modality, outputs concatenated; single: one head "
        "over the concatenated embeddings.",
    )
    hidden_dims: list[int] = Field(
        [256], min_length=1, max_length=8, description="Width of each hidden layer."
    )
    out_dim: int = Field(128, ge=2, le=4096, description="Output width of each head.")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    skip_pca: int = Field(
        128,
        ge=0,
        le=4096,
        description="Width of a fixed skip branch appended to the projection: the top principal "
        "components of the normalised inputs (modalities weighted alike), fitted on the training "
        "rows, so that what the contrastive heads discard stays available downstream. 0: none "
        "(and always 0 under the paper preset).",
    )
    normalize: bool = Field(True, description="L2-normalise each head's output rows.")
    input_norm: Literal["none", "l2", "standardize"] = Field(
        "standardize",
        description="Per-modality input scaling, fitted on the training rows and stored with the "
        "head: standardize (zero mean, unit variance per dimension), l2 (unit rows), none. Image "
        "features can have hundreds of times the variance of text features (228x on the demo corpus).",
    )
    # -- loss --
    loss: Literal["supcon", "pairwise_bce", "triplet"] = Field(
        "supcon", description="Contrastive loss (adapt.train.losses.LOSSES)."
    )
    temperature: float = Field(
        0.1, gt=0.0, le=10.0, description="Softmax / logit temperature of supcon and pairwise_bce."
    )
    margin: float = Field(0.2, ge=0.0, le=4.0, description="Triplet margin (distance units).")
    multilabel_rule: Literal["overlap", "jaccard"] = Field(
        "overlap", description="Multi-label tasks: when two rows count as a positive pair."
    )
    cross_modal_weight: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="Weight of a CLIP-style term aligning a row's modalities (per_modality only).",
    )
    # -- optimisation --
    sampler: Literal["shuffle", "balanced"] = Field(
        "balanced",
        description="Mini-batches: shuffle (random rows) or balanced (every row has a positive "
        "partner in its batch; for many classes or rare ones).",
    )
    classes_per_batch: int | None = Field(
        None, ge=1, description="balanced sampler: most classes per batch (None: batch_size / 4)."
    )
    batch_size: int = Field(
        256, ge=2, le=65536, description="Rows per optimiser step, over all workers together."
    )
    epochs: int = Field(30, ge=1, le=10000, description="Most passes over the training rows.")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Learning rate (Adam).")
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="Decoupled weight decay (AdamW); 0 is plain Adam."
    )
    patience: int | None = Field(
        5,
        ge=1,
        le=1000,
        description="Stop after this many epochs without a lower validation loss and keep the "
        "best epoch's weights; None trains every epoch and keeps the last.",
    )
    early_stopping_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of the training rows held out (stratified by class, by a hash of the "
        "row id) for the validation loss that early stopping watches.",
    )
    seed: int = Field(42, ge=0, description="Seeds weights, batches and the hold-out split.")
    # -- data --
    label_column: str = Field("label", description="Label column: label or a label_* column.")
    exclude_splits: list[str] = Field(
        ["test"], description="Rows whose `split` value is listed here never train the head."
    )
    ids_uri: str | None = Field(
        None,
        description="File of row ids to fit on (JSON list, or one id per line); None: every row "
        "not excluded by exclude_splits.",
    )
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Name of the run under {output}/heads/; None derives it from the config and "
        "the embeddings, so a re-submitted job resumes the same run.",
    )
    # -- resources and fault tolerance --
    local: bool = Field(
        False, description="Fit in this process without Ray Train (small data, tests)."
    )
    num_workers: int = Field(
        1, ge=0, le=1024, description="Ray Train workers (DDP); 0 is the same as local: true."
    )
    use_gpu: bool = Field(False, description="One GPU per Ray Train worker.")
    num_cpus_per_worker: float = Field(
        0.5,
        gt=0.0,
        le=256.0,
        description="CPUs reserved per Train worker. Fractional on purpose: whole CPUs for every "
        "worker can leave none for the Ray Data read that feeds them, and the run then hangs.",
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads per worker (None: CPUs asked, min 1)."
    )
    num_cpus_per_read: float | None = Field(
        None,
        gt=0.0,
        le=256.0,
        description="CPUs reserved by each Ray Data read task that feeds the Train workers. None: "
        "1 where the workers leave a CPU free (one-CPU tasks read about twice as fast: fewer "
        "processes to start), else 0.25, since a read task that cannot be scheduled hangs the run.",
    )
    max_rows_in_memory: int | None = Field(
        250_000,
        ge=10,
        description="Rows a Train worker holds in memory. A worker whose share (training rows "
        "over num_workers) is larger writes its rows to local disk (under TMPDIR) in buckets "
        "by id hash as Ray Data streams them in, and each epoch loads one bucket at a time: "
        "its batches then mix rows of one bucket of at most about this many rows, not of the "
        "whole share. None: always in memory. A local fit (train.local) holds every row.",
    )
    gather_negatives: bool = Field(
        True,
        description="Gather projections from every worker so each loss sees the global batch "
        "(results then do not depend on num_workers).",
    )
    # -- selection --
    search: SearchConfig | None = Field(
        default_factory=SearchConfig,
        description="Hyper-parameter selection on a hold-out of the training rows "
        "(adapt.train.search); "
        "null: fit the settings as given. Off under the paper preset unless set.",
    )
    checkpoint_every_epochs: int = Field(
        1, ge=1, le=10000, description="Checkpoint every K epochs (and after the last)."
    )
    checkpoints_to_keep: int = Field(2, ge=1, le=100, description="Checkpoints kept per run.")
    max_failures: int = Field(
        2, ge=-1, le=1000, description="Worker failures to recover from (-1: no limit)."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") != "paper":
            return data
        fixed = [k for k, v in PAPER_FIXED_SHAPE.items() if k in data and data[k] != v]
        search = data.get("search")
        grid = search.get("grid", {}) if isinstance(search, dict) else {}
        fixed += [f"search.grid.{k}" for k in grid if k in PAPER_FIXED_SHAPE]
        if fixed:
            raise ValueError(
                f"preset 'paper' fixes the head shape; remove {fixed} or drop the preset"
            )
        return {**PAPER_RECIPE, "search": None, **data, **PAPER_FIXED_SHAPE}

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        problems = []
        if self.cross_modal_weight > 0 and self.mode != "per_modality":
            problems.append("cross_modal_weight > 0 needs mode: per_modality")
        if self.patience is not None and self.early_stopping_fraction == 0:
            problems.append(
                "early stopping (patience) needs early_stopping_fraction > 0, or set patience: null"
            )
        if not (self.label_column == "label" or self.label_column.startswith("label_")):
            problems.append(f"label_column must be 'label' or 'label_*', got {self.label_column!r}")
        if any(h < 1 or h > 65536 for h in self.hidden_dims):
            problems.append(f"hidden_dims must hold widths in 1..65536, got {self.hidden_dims}")
        if self.classes_per_batch is not None and 2 * self.classes_per_batch > self.batch_size:
            problems.append("classes_per_batch can be at most batch_size / 2 (2 rows per class)")
        if problems:
            raise ValueError("; ".join(problems))
        if self.search is not None:
            self._check_trials()
        return self

    def _check_trials(self) -> None:
        """Every combination of the search grid must be a valid config itself."""
        if self.search.n_trials > MAX_TRIALS:
            raise ValueError(
                f"search.grid makes {self.search.n_trials} trials; at most {MAX_TRIALS}"
            )
        problems = []
        for overrides in self.trial_overrides():
            try:
                self.with_overrides(overrides)
            except ValidationError as e:
                reasons = "; ".join(err["msg"] for err in e.errors())
                problems.append(f"search trial {overrides}: {reasons}")
        if problems:
            raise ValueError("; ".join(problems[:5]))

    def trial_overrides(self) -> list[dict[str, Any]]:
        """The search grid's combinations, in grid order (the first key varies slowest);
        [] without a search."""
        if self.search is None or not self.search.grid:
            return []
        keys = list(self.search.grid)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(self.search.grid[k] for k in keys))
        ]

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """This config with a trial's settings, validated, and no search of its own."""
        base = self.model_dump(exclude={"search"})
        return TrainConfig.model_validate({**base, **overrides, "search": None})

    @property
    def is_local(self) -> bool:
        return self.local or self.num_workers == 0


# Score stage: representations a user can ask for. A family name ("raw") stands for all its
# variants; "concat" is every modality side by side, each scaled to unit total variance first.
SCORE_FAMILIES = ("raw", "pca", "projected")
# score.max_rows: rows per task the default protocol scores (5 folds, 7 classifiers, 3 validation
# folds; in-fold heads included). On the demo corpus it took 37 minutes on 2 CPUs on all 1,906 rows
# (xgboost with 100 rounds: 63% of the cell time, the forest 28%), 27 minutes on this sample
# with 50 rounds (more inner validation splits on fewer rows) and 21 minutes with 64 histogram
# bins; 14.4 minutes on a less loaded day: at the 15 minutes aimed at only on a good day.
DEFAULT_SCORE_MAX_ROWS = 1000
PROJECTED_MODES = ("single", "per_modality")


def _known_classifiers(names: list[str]) -> list[str]:
    unknown = sorted(set(names) - set(classifiers.NAMES))
    if unknown:
        raise ValueError(f"unknown classifier(s) {unknown}: valid are {list(classifiers.NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError("a classifier is listed twice")
    return names


class ScoreTask(Strict):
    """One question the score stage answers: a label column, read as one task type.

    `positive` turns any column into a one-vs-rest binary task (rows whose label is, or for a
    multi-label column contains, `positive` against all others). `min_class_count` drops classes
    with fewer rows than that before scoring: their rows (single-label tasks) or the label alone
    (multi-label tasks); the report lists what was dropped.
    """

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._=:-]{0,127}$",
        description="Name in the report; None: the label column, plus '=POSITIVE' for one-vs-rest.",
    )
    label_column: str = Field("label", description="Label column: label or a label_* column.")
    type: Literal["auto", "binary", "multiclass", "multilabel"] = Field(
        "auto",
        description="auto: lists per row -> multilabel, 2 classes -> binary, else multiclass.",
    )
    positive: str | None = Field(
        None, description="One-vs-rest: this class against all others (a binary task)."
    )
    min_class_count: int | None = Field(
        None,
        ge=1,
        description="Drop classes with fewer rows than this (None: score.n_folds, so that every "
        "class can be in every test fold).",
    )

    @model_validator(mode="after")
    def _check(self) -> ScoreTask:
        problems = []
        if not (self.label_column == "label" or self.label_column.startswith("label_")):
            problems.append(f"label_column must be 'label' or 'label_*', got {self.label_column!r}")
        if self.positive is not None and self.type not in ("auto", "binary"):
            problems.append(f"positive makes a binary task; drop type: {self.type} or positive")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def task_name(self) -> str:
        if self.name:
            return self.name
        return self.label_column + (f"={self.positive}" if self.positive is not None else "")


class ScoreConfig(Strict):
    """The score stage: downstream classifiers on raw, PCA and projected embeddings, k-fold.

    Cells (task, representation, classifier, fold) run as Ray tasks; representations are built
    once per (task, fold), heads trained on that fold's training rows only.
    """

    RENAMED: ClassVar[dict[str, str]] = {"val_fraction": "validation_fraction"}

    tasks: list[ScoreTask] = Field(
        [ScoreTask()], min_length=1, description="Tasks to score (default: one task on `label`)."
    )
    representations: list[str] = Field(
        ["raw", "pca", "projected"],
        min_length=1,
        description="raw[:MODALITY|:concat], pca[:MODALITY|:concat], projected[:single|"
        ":per_modality]; a bare family name means all its variants.",
    )
    heads: list[str] = Field(
        [],
        description="URIs of trained heads (adapt.load_head: folders or hf://ORG/NAME) to score as "
        "well; such a head may have been trained on rows that are test rows here, which the "
        "report says.",
    )
    classifiers: list[str] = Field(
        list(classifiers.DEFAULT),
        min_length=1,
        description="Downstream classifiers to fit. The tuned probes (logreg_tuned, svc_tuned: C "
        "chosen per cell by an inner 3-fold CV) are valid names, not in the default list.",
    )
    classifier_params: dict[str, dict[str, Any]] = Field(
        {}, description="Classifier -> parameters overriding its defaults, e.g. {svc: {C: 10}}."
    )
    n_folds: int = Field(5, ge=2, le=100, description="Folds (kfold) or repeats (repeated).")
    scheme: Literal["kfold", "repeated"] = Field(
        "kfold", description="kfold: stratified partition; repeated: independent 80/20 splits."
    )
    seed: int = Field(0, ge=0, description="Seeds folds, classifiers, heads and bootstraps.")
    pca_k: int | None = Field(
        None,
        ge=1,
        description="PCA components, for each modality and for the concatenation (None: "
        "train.out_dim, the output size of one head).",
    )
    classifier_seeds: int = Field(
        3,
        ge=1,
        le=100,
        description="Fits per cell, with seeds seed+i*1000, of a classifier whose fit draws random "
        "numbers (mlp, random_forest; xgboost when it subsamples): the cell's scores average over "
        "them, and so do its paired gains. One fit of an MLP on a few hundred rows varies by more "
        "than the differences between representations.",
    )
    only_folds: list[int] | None = Field(
        None,
        description="Score only these outer folds, numbered from 0 (smoke runs, benchmarks); "
        "None: all of them.",
    )
    validation_folds: int = Field(
        3,
        ge=0,
        le=100,
        description="Outer folds whose training rows get an inner validation split; the "
        "recommendation comes from those validation scores only, pooled (0: no recommendation). "
        "One split alone let a noisy classifier (an MLP) pick a representation that then lost "
        "on test rows.",
    )
    validation_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of a fold's training rows the inner split holds out.",
    )
    validation_rows: int = Field(
        1000,
        ge=0,
        le=10_000_000,
        description="Per task, more inner validation splits of each validation fold (the other "
        "inner folds, each holding out different rows) until the validation rows pooled over them "
        "reach this many, or every training row is held out once. A few hundred rows leave the "
        "interval of a 5-point gain reaching zero; a small task gets more splits, which are cheap "
        "there (0: one split).",
    )
    max_rows: int | None = Field(
        DEFAULT_SCORE_MAX_ROWS,
        ge=100,
        description="Per task, score a stratified sample of at most this many rows (chosen by id "
        "hash, so the same rows every run): the classifier cells and the in-fold heads use only "
        "them, and the report says so. With it the full protocol (5 folds, 7 classifiers, "
        "validation splits) took 14 to 21 minutes on 2 CPUs on the demo corpus; raise it on a "
        "cluster (intervals narrow as 1/sqrt(rows)). The train stage's head always trains on every row. "
        "None: every row.",
    )
    num_gpus_per_cell: float = Field(
        0.0,
        ge=0.0,
        le=8.0,
        description="GPUs reserved per xgboost cell, which then fits on CUDA (the other "
        "classifiers run on CPU and never reserve one).",
    )
    metric: Literal["macro_f1", "micro_f1", "accuracy"] = Field(
        "macro_f1", description="Metric of the gains, the recommendation and the headline table."
    )
    n_boot: int = Field(1000, ge=100, le=100000, description="Bootstrap resamples per interval.")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="1 - confidence of the intervals.")
    executor: Literal["ray", "local"] = Field(
        "ray", description="ray: cells are Ray tasks; local: one after another in this process."
    )
    num_cpus_per_cell: float = Field(
        0.5, gt=0.0, le=256.0, description="CPUs reserved per cell (fractional packs more in)."
    )
    num_cpus_per_fold: float = Field(
        1.0, gt=0.0, le=256.0, description="CPUs reserved to build a fold's representations."
    )
    plots: bool = Field(True, description="Write PNG plots next to the report.")
    predictions: bool = Field(
        False,
        description="Also write predictions.npz next to the report: every cell's predictions "
        "(all fits), with each fold's row ids and true labels, test and validation folds alike; "
        "read it with adapt.score.read_predictions.",
    )
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Name of the report folder under {output}/reports/; None: time-stamped.",
    )

    @field_validator("representations")
    @classmethod
    def _known_representations(cls, names: list[str]) -> list[str]:
        bad = []
        for name in names:
            family, _, variant = name.partition(":")
            if family not in SCORE_FAMILIES:
                bad.append(name)
            elif family == "projected" and variant and variant not in PROJECTED_MODES:
                bad.append(name)
        if bad:
            raise ValueError(
                f"unknown representation(s) {bad}: use raw, pca or projected, or raw:MODALITY, "
                "raw:concat, pca:MODALITY, pca:concat, projected:single, projected:per_modality"
            )
        return names

    @field_validator("classifiers")
    @classmethod
    def _known_classifiers(cls, names: list[str]) -> list[str]:
        return _known_classifiers(names)

    @model_validator(mode="before")
    @classmethod
    def _default_validation_folds(cls, data: Any) -> Any:
        # The default (3) follows a smaller n_folds down; a value given explicitly must fit.
        if isinstance(data, dict) and "validation_folds" not in data:
            n_folds = data.get("n_folds", 5)
            if isinstance(n_folds, int) and not isinstance(n_folds, bool) and 2 <= n_folds < 3:
                return {**data, "validation_folds": n_folds}
        return data

    @model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        problems = []
        stray = sorted(set(self.classifier_params) - set(self.classifiers))
        if stray:
            problems.append(f"classifier_params names {stray}, which are not in classifiers")
        names = [t.task_name for t in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"task names {twice} are used twice: give each task a distinct name")
        if self.only_folds is not None and not all(0 <= f < self.n_folds for f in self.only_folds):
            problems.append(f"only_folds must be fold numbers in 0..{self.n_folds - 1}")
        if self.validation_folds > self.n_folds:
            problems.append(
                f"validation_folds ({self.validation_folds}) > n_folds ({self.n_folds})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class NightlyConfig(Strict):
    """Re-adaptation on a schedule: extract what is new, retrain, score, promote if better."""

    holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of rows (chosen by a hash of the id, stable across nights) that no head "
        "ever trains on: champion and challenger are compared on them.",
    )
    classifiers: list[str] = Field(
        ["logreg", "knn"],
        min_length=1,
        description="Classifiers fitted on projected training rows to compare the two heads.",
    )
    compare_max_rows: int | None = Field(
        20_000,
        ge=100,
        description="The comparison fits its classifiers on at most this many of the training "
        "rows and scores them on at most this many held-out rows, each a stratified sample by id "
        "hash (the same rows for champion and challenger, and from night to night); None: all. "
        "kNN's cost grows with the product of the two.",
    )
    metric: Literal["macro_f1", "micro_f1", "accuracy"] = "macro_f1"
    margin: float = Field(
        0.0, ge=0, description="Promote only when the mean gain over tasks is at least this."
    )
    tolerance: float = Field(
        0.01, ge=0, description="Never promote when any task drops by more than this."
    )
    lease_ttl_s: float = Field(
        6 * 3600, gt=0, description="A run's lease expires after this, so a dead run frees it."
    )
    wait_for_lease_s: float = Field(
        0, ge=0, description="Wait this long for a running night to finish before giving up."
    )
    probe_rows: int = Field(
        32,
        ge=0,
        description="Rows of the first shard embedded again each night to check determinism.",
    )
    score_report: bool = Field(
        False, description="Also run the full score stage (k-fold report) on the new version."
    )


class ApplyConfig(Strict):
    """The apply stage: a trained head over every committed embeddings file."""

    head: str | None = Field(
        None,
        description="The head to apply: a heads/<run-id> folder, its head.safetensors, "
        "hf://ORG/NAME, or an output root (its latest head). None: train.run_id's head when that is set, else the latest head "
        "under `output`.",
    )
    num_workers: int = Field(1, ge=1, le=1024, description="Apply actors (one head copy each).")
    num_cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0, description="CPUs per apply actor.")


class Config(Strict):
    """A whole job configuration; each stage reads the top-level keys and its own section."""

    # The file it was loaded from, for the commands a report suggests; not part of the config.
    _source: str | None = PrivateAttr(default=None)

    corpus: str = Field(description="URI of the input corpus (local path or s3://bucket/prefix).")
    output: str = Field(description="URI of the root every stage writes under.")
    encoders: dict[Modality, EncoderSpec] = Field(
        description="Modality -> encoder, e.g. {text: 'hf:DIR', image: 'timm:ARCH@WEIGHTS'}."
    )
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    extract: ExtractConfig = ExtractConfig()
    nightly: NightlyConfig = NightlyConfig()
    train: TrainConfig = TrainConfig()
    apply: ApplyConfig = ApplyConfig()
    score: ScoreConfig = ScoreConfig()

    @field_validator("corpus", "output")
    @classmethod
    def _absolute_local_paths(cls, value: str) -> str:
        # Ray workers (Ray Train's above all) do not share the driver's working directory, so a
        # relative local path would point somewhere else in them: anchor it here, once.
        if "://" in value and not value.startswith("file://"):
            return value
        return os.path.abspath(value.removeprefix("file://"))

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

    @model_validator(mode="after")
    def _check_score(self) -> Config:
        # Representation variants name modalities, which only the encoders know.
        variants = {*self.encoders, "concat"}
        bad = [
            r
            for r in self.score.representations
            if r.partition(":")[0] in ("raw", "pca") and r.partition(":")[2] not in ("", *variants)
        ]
        if bad:
            raise ValueError(
                f"score.representations {bad} name no configured modality; "
                f"use one of {sorted(variants)} after raw: or pca:"
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
            raise ConfigError(
                f"--set {item!r}: expected key=value, e.g. --set extract.batch_size=32"
            )
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


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> Config:
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
    data = apply_overrides(copy.deepcopy(data), overrides)  # never edit the caller's dicts
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, Config, source)) from e
    config._source = str(path) if path else None
    return config
