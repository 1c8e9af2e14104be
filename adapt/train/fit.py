"""Train stage core: fit a projection head on in-memory embeddings. Pure torch and numpy.

No Ray and no storage here, so that the same loop runs in a unit test, in the score stage (which
fits one head per fold), in the train stage's local mode, and inside every Ray Train worker. The
worker passes a `TorchCollective` (torch.distributed) where the local fit passes none; everything
else is shared: input normalisation, batches, losses (`adapt.train.losses.batch_loss`), early
stopping and the state that checkpoints save. The hold-out split is `adapt.splits.holdout_mask`.

Public API:
- `fit_head(train_inputs, train_labels, cfg, val_inputs=None, val_labels=None, seed=None)`
- `project(head, inputs)`: projections of numpy inputs, with the head's input normalisation

Early stopping watches the validation loss: the training objective computed on held-out rows in
fixed batches. It needs no extra model and costs one forward pass over the validation rows per
epoch. A pair AUC (cosine similarity of the projections ranks same-label pairs above the others,
the paper's validation figure) is recorded next to it on up to `PAIR_AUC_ROWS` rows, for reading,
not for stopping.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from adapt.config import TrainConfig
from adapt.labels import encode_labels, encode_with_classes, infer_task_type
from adapt.splits import holdout_mask, val_order
from adapt.train.heads import InputNorm, MultiHead, build_head, init_skip, skip_moments
from adapt.train.losses import (
    NoPositivePairError,
    batch_loss,
    class_balanced_indices,
    positive_matrix,
)

# Validation rows used for the pair AUC: 500 rows give 124,750 pairs, enough for a figure steady to
# about 0.005 and about 15 ms to rank; it is computed every epoch.
PAIR_AUC_ROWS = 500


def make_head(cfg: TrainConfig, in_dims: dict[str, int]) -> MultiHead:
    """The head the config asks for, with fresh weights (seed torch first for the same ones)."""
    return build_head(
        cfg.mode,
        in_dims,
        hidden_dims=tuple(cfg.hidden_dims),
        out_dim=cfg.out_dim,
        dropout=cfg.dropout,
        normalize=cfg.normalize,
        preset=cfg.preset,
        skip_dim=min(cfg.skip_pca, sum(in_dims.values())),
    )


class PartsModel(nn.Module):
    """Wraps a MultiHead so that `forward` returns the per-modality parts.

    DistributedDataParallel synchronises gradients only for what goes through its `forward`, and
    the cross-modal term needs the parts, so the wrapped module's forward must return them.
    """

    def __init__(self, head: MultiHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.head.forward_parts(inputs)


def epoch_batches(
    y: np.ndarray,
    batch_size: int,
    sampler: str,
    seed: int,
    n_steps: int | None = None,
    classes_per_batch: int | None = None,
) -> list[np.ndarray]:
    """Row-index batches for one epoch.

    shuffle: a random permutation cut into batches (a last batch of one row joins the one before:
    a single row has no pair). balanced: `losses.class_balanced_indices`. `n_steps` fixes the
    number of batches (workers of one run must take the same number of steps); rows are then
    drawn again from a fresh pass once all have been drawn.
    """
    n = len(y)
    if sampler == "balanced":
        num_rows = None if n_steps is None else n_steps * batch_size
        return class_balanced_indices(y, batch_size, classes_per_batch, seed, num_rows=num_rows)
    if sampler != "shuffle":
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers are ['balanced', 'shuffle']")
    rng = np.random.default_rng(seed)
    if n_steps is None:
        order = rng.permutation(n)
        cuts = list(range(batch_size, n, batch_size))
        if cuts and n - cuts[-1] == 1:
            cuts.pop()
        return np.split(order, cuts)
    passes = math.ceil(n_steps * batch_size / n)
    order = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_steps)]


def auroc(score: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties), in numpy: Train
    workers need not import scikit-learn for it."""
    order = np.argsort(score)
    s = score[order]
    # Average rank (1-based) of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_pos = int(target.sum())
    n_neg = len(target) - n_pos
    return float((ranks[target].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pair_auc(z: np.ndarray, y: np.ndarray) -> float | None:
    """AUROC of cosine similarity for telling same-label pairs (i < j) from the rest."""
    if len(z) < 3:
        return None
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    i, j = np.triu_indices(len(z), k=1)
    target = positive_matrix(torch.as_tensor(y), "overlap").numpy()[i, j] > 0
    if target.all() or not target.any():
        return None
    return auroc((zn @ zn.T)[i, j], target)


class LocalCollective:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def max(self, value: int) -> int:
        return value

    def gather_rows(self, x: Tensor) -> Tensor:
        return x


class TorchCollective:
    """torch.distributed collectives over an initialised process group (Ray Train sets one up).

    `device` is where the backend wants tensors: the CPU for gloo, the worker's GPU for nccl.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        self.dist = dist
        self.device = torch.device(device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def sum(self, values: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)
        self.dist.all_reduce(t)
        return t.cpu().numpy()

    def max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def gather_rows(self, x: Tensor) -> Tensor:
        """Rows of every worker, concatenated in rank order; this worker's rows keep their
        gradient (all_gather does not carry one). Workers may hold different row counts."""
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
        counts = [torch.zeros_like(n) for _ in range(self.world_size)]
        self.dist.all_gather(counts, n)
        counts = [int(c.item()) for c in counts]
        width = max(counts)
        padded = x.detach()
        if x.shape[0] < width:
            pad = x.new_zeros((width - x.shape[0], *x.shape[1:]))
            padded = torch.cat([padded, pad])
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        self.dist.all_gather(out, padded.contiguous())
        out = [t[:c] for t, c in zip(out, counts, strict=True)]
        out[self.rank] = x
        return torch.cat(out)


@dataclass
class TrainState:
    """Everything a checkpoint needs to continue a fit where it stopped (weights aside)."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float | None = None
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    resumed_from: list[int] = field(default_factory=list)  # epochs a run resumed after
    first_step_at: float | None = None  # wall clock (time.time()) of the first optimiser step

    def done(self, cfg: TrainConfig) -> bool:
        return self.stopped_early or self.epoch >= cfg.epochs

    def to_json(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "epoch",
                "history",
                "best_epoch",
                "best_val_loss",
                "bad_epochs",
                "stopped_early",
                "resumed_from",
                "first_step_at",
            )
        }

    @classmethod
    def from_json(cls, data: dict, best_state: dict[str, Tensor] | None = None) -> TrainState:
        return cls(**data, best_state=best_state)


class Side(Protocol):
    """What the epoch loop needs of the training or validation rows: a `Split` in memory, or a
    `spill.SpilledSplit` read back from a worker's local disk."""

    def __len__(self) -> int: ...

    def batches(
        self,
        batch_size: int,
        sampler: str,
        seed: int,
        n_steps: int | None = None,
        classes_per_batch: int | None = None,
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]: ...

    def in_order(self, batch_size: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]: ...

    def first(self, n: int) -> tuple[dict[str, Tensor], Tensor]: ...


@dataclass
class Split:
    """Rows of one side (train or validation) as tensors: inputs per modality and labels."""

    x: dict[str, Tensor]
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def rows(self, index: np.ndarray) -> tuple[dict[str, Tensor], Tensor]:
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return {m: x.index_select(0, idx) for m, x in self.x.items()}, self.y.index_select(0, idx)

    def batches(
        self,
        batch_size: int,
        sampler: str,
        seed: int,
        n_steps: int | None = None,
        classes_per_batch: int | None = None,
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """One epoch of training batches (`epoch_batches` over all the rows)."""
        for index in epoch_batches(
            self.y.numpy(), batch_size, sampler, seed, n_steps, classes_per_batch
        ):
            yield self.rows(index)

    def in_order(self, batch_size: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """The rows in their order, in batches of `batch_size` (validation)."""
        n = len(self)
        for lo in range(0, n, batch_size):
            yield self.rows(np.arange(lo, min(n, lo + batch_size)))

    def first(self, n: int) -> tuple[dict[str, Tensor], Tensor]:
        return self.rows(np.arange(min(n, len(self))))


def make_split(inputs: dict[str, np.ndarray], y: np.ndarray, norm: InputNorm) -> Split:
    x = {m: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for m, v in inputs.items()}
    with torch.no_grad():
        x = norm.apply(x)
    return Split({m: v.contiguous() for m, v in x.items()}, torch.from_numpy(np.asarray(y)))


def make_optimizer(head: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # AdamW with weight_decay 0 is exactly Adam (the paper's optimiser). foreach: one kernel per
    # operation over all parameters instead of one per tensor; the heads are small, so per-tensor
    # dispatch would cost more than the arithmetic.
    return torch.optim.AdamW(
        head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
    )


def _evaluate(
    model: nn.Module, head: MultiHead, val: Side, cfg: TrainConfig, collective: Any
) -> dict:
    """Validation loss in fixed batches (all workers together) and a local pair AUC."""
    totals = np.zeros(3)  # loss sum, batches, skipped
    auc = None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        # Validation rows are in hold-out-key order, which is random with respect to class.
        for x, y in val.in_order(cfg.batch_size):
            try:
                totals += [float(batch_loss(head.forward_parts(x), y, cfg)), 1, 0]
            except NoPositivePairError:
                totals += [0, 0, 1]
        if len(val):
            x, y = val.first(PAIR_AUC_ROWS)
            auc = pair_auc(head(x).cpu().numpy(), y.numpy())
    model.train(was_training)
    totals = collective.sum(totals)
    loss = float(totals[0] / totals[1]) if totals[1] else None
    return {
        "val_loss": loss,
        "val_batches": int(totals[1]),
        "val_skipped": int(totals[2]),
        "val_pair_auc": auc,
    }


def train_epochs(
    model: nn.Module,
    head: MultiHead,
    optimizer: torch.optim.Optimizer,
    train: Side,
    val: Side | None,
    cfg: TrainConfig,
    state: TrainState,
    seed: int,
    collective: Any = None,
    on_epoch_end: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Run epochs from `state.epoch + 1` until `cfg.epochs` or early stopping; returns the state.

    `model` is what gradients flow through (the PartsModel, DDP-wrapped across workers); `head` is
    the bare MultiHead inside it, used for evaluation and state dicts. At the end the head holds
    the best epoch's weights when early stopping is on (patience set), else the last epoch's.

    Across workers (`collective.world_size > 1`), every worker takes the same number of steps.
    With `gather_negatives`, the loss of each step is computed on the whole global batch (rows
    of all workers); else on the worker's own rows, and DDP averages the gradients.
    A batch without a positive pair is skipped and counted in the epoch's `skipped_batches`;
    across workers it contributes a zero gradient and the others' mean is rescaled.
    """
    collective = collective or LocalCollective()
    world = collective.world_size
    gather = cfg.gather_negatives and world > 1
    local_batch = max(2, math.ceil(cfg.batch_size / world))
    n_steps = None
    if world > 1:
        n_steps = collective.max(math.ceil(len(train) / local_batch))
    model.train()
    while not state.done(cfg):
        epoch = state.epoch + 1
        t0 = time.perf_counter()
        # Per epoch (and worker) seeds: a resumed run draws the same batches and dropout masks.
        torch.manual_seed(seed * 100_003 + epoch * 1009 + collective.rank)
        batches = train.batches(
            local_batch,
            cfg.sampler,
            seed * 100_003 + epoch * 1009 + collective.rank,
            n_steps=n_steps,
            classes_per_batch=cfg.classes_per_batch,
        )
        loss_sum, steps, skipped, n_batches = 0.0, 0, 0, 0
        for x, y in batches:
            loss, valid, stepped = _step(model, optimizer, x, y, cfg, collective, gather)
            if stepped and state.first_step_at is None:
                state.first_step_at = time.time()
            loss_sum += loss
            steps += valid
            skipped += 1 - valid
            n_batches += 1
        totals = collective.sum([loss_sum, steps, skipped])
        if totals[1] == 0:
            raise RuntimeError(
                f"epoch {epoch}: every batch lacked a positive pair, nothing was trained; use "
                "train.sampler: balanced or a larger train.batch_size"
            )
        record = {
            "epoch": epoch,
            "train_loss": float(totals[0] / totals[1]),
            "steps": n_batches,
            # Batches without a positive pair, over all workers; a gathered global batch is one.
            "skipped_batches": int(totals[2]) // (world if gather else 1),
        }
        if val is not None:  # every worker evaluates (collectives), even with no rows of its own
            record.update(_evaluate(model, head, val, cfg, collective))
        record["epoch_s"] = round(time.perf_counter() - t0, 4)
        state.history.append(record)
        state.epoch = epoch
        _early_stopping(state, head, cfg, record.get("val_loss"))
        if on_epoch_end is not None:
            on_epoch_end(state)
    if cfg.patience is not None and state.best_state is not None:
        head.load_state_dict(state.best_state)
    else:
        state.best_epoch = state.epoch
    return state


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: dict[str, Tensor],
    y: Tensor,
    cfg: TrainConfig,
    collective: Any,
    gather: bool,
) -> tuple[float, int, bool]:
    """One optimiser step on one batch; returns (its loss, 1, stepped), or (0.0, 0, stepped)
    when the batch has no positive pair and is skipped here; `stepped` says whether the weights
    moved (on some worker's valid batch). Every worker calls it the same number of times."""
    world = collective.world_size
    parts = model(x)
    if gather:
        parts = {k: collective.gather_rows(v) for k, v in parts.items()}
        y = collective.gather_rows(y.to(next(iter(parts.values())).device))
    try:
        loss = batch_loss(parts, y, cfg)
        valid = 1
    except NoPositivePairError:
        # A zero that still flows through the graph, so DDP's gradient sync happens.
        loss = sum(v.sum() for v in parts.values()) * 0.0
        valid = 0
    if world > 1 and not gather:
        n_valid = int(collective.sum([valid])[0])
    else:
        n_valid = valid * world  # gathered: every worker sees the same batch
    if n_valid == 0:
        if world > 1:
            loss.backward()  # keep DDP's reducer in step; the gradients are zero
        optimizer.zero_grad(set_to_none=True)
        return 0.0, valid, False
    # DDP averages gradients over `world` workers: rescale to a mean over the valid ones;
    # gathered, every worker holds the full loss, so the average needs a factor `world`.
    factor = world if gather else world / n_valid
    optimizer.zero_grad(set_to_none=True)
    (loss * factor).backward()
    optimizer.step()
    return (float(loss.detach()) if valid else 0.0), valid, True


def _early_stopping(
    state: TrainState, head: MultiHead, cfg: TrainConfig, val_loss: float | None
) -> None:
    if cfg.patience is None or val_loss is None:
        state.best_epoch = state.epoch
        return
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        state.best_val_loss = val_loss
        state.best_epoch = state.epoch
        state.best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
        if state.bad_epochs >= cfg.patience:
            state.stopped_early = True


@dataclass
class FitResult:
    head: MultiHead  # best weights, eval mode, `head.input_norm` set
    history: list[dict]
    classes: list[str]
    task_type: str
    best_epoch: int
    n_train: int
    n_val: int
    input_norm: InputNorm = field(default_factory=InputNorm)
    state: TrainState | None = None

    def project(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        return project(self.head, inputs, batch_size)


def _check_inputs(inputs: dict[str, np.ndarray], n: int, name: str) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError(f"{name} must be a non-empty dict modality -> [rows, dim] array")
    out = {}
    for m, x in inputs.items():
        x = np.asarray(x)
        if x.ndim != 2 or len(x) != n:
            raise ValueError(
                f"{name}[{m!r}] has shape {x.shape}; expected [{n}, dim] (one row per label)"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"{name}[{m!r}] holds NaN or infinite values")
        out[m] = x
    return out


def fit_head(
    train_inputs: dict[str, np.ndarray],
    train_labels: list,
    cfg: TrainConfig,
    val_inputs: dict[str, np.ndarray] | None = None,
    val_labels: list | None = None,
    seed: int | None = None,
    ids: Sequence[Any] | None = None,
) -> FitResult:
    """Fit a projection head in this process.

    Labels are strings (binary / multi-class) or lists of strings (multi-label). Without
    `val_inputs`, `cfg.early_stopping_fraction` of the training rows is held out (`holdout_mask`, keyed by
    `ids` when given, else by row position) for early stopping. `seed` overrides `cfg.seed`.
    The same inputs, config and seed give the same weights.
    """
    seed = cfg.seed if seed is None else seed
    train_inputs = _check_inputs(train_inputs, len(train_labels), "train_inputs")
    task_type = infer_task_type(train_labels)
    y_all, classes = encode_labels(train_labels, task_type)
    if val_inputs is None:
        if val_labels is not None:
            raise ValueError("val_labels given without val_inputs")
        is_val = holdout_mask(y_all, task_type, cfg.early_stopping_fraction, seed, ids)
        val_np = {m: x[is_val] for m, x in train_inputs.items()}
        train_np = {m: x[~is_val] for m, x in train_inputs.items()}
        y_val, y_train = y_all[is_val], y_all[~is_val]
        if is_val.any():
            # Hold-out-key order: random with respect to class, so validation batches mix classes.
            order = val_order(int(is_val.sum()), seed)
            val_np = {m: x[order] for m, x in val_np.items()}
            y_val = y_val[order]
    else:
        if val_labels is None:
            raise ValueError("val_inputs given without val_labels")
        val_np = _check_inputs(val_inputs, len(val_labels), "val_inputs")
        train_np, y_train = train_inputs, y_all
        y_val = encode_with_classes(val_labels, task_type, classes)
        order = val_order(len(y_val), seed)
        val_np = {m: x[order] for m, x in val_np.items()}
        y_val = y_val[order]
    if cfg.patience is not None and len(y_val) == 0:
        raise ValueError(
            "early stopping needs validation rows: give val_inputs, raise early_stopping_fraction, or set "
            "patience: null"
        )

    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        torch.manual_seed(seed)
        norm = InputNorm.fit(cfg.input_norm, train_np)
        train = make_split(train_np, y_train, norm)
        val = make_split(val_np, y_val, norm) if len(y_val) else None
        head = make_head(cfg, {m: x.shape[1] for m, x in train_np.items()})
        if head.skip_dim:
            init_skip(head, skip_moments(train.x, head.modalities))
        model = PartsModel(head)
        optimizer = make_optimizer(head, cfg)
        state = train_epochs(model, head, optimizer, train, val, cfg, TrainState(), seed)
    finally:
        torch.set_num_threads(threads)
    head.eval()
    head.input_norm = norm
    return FitResult(
        head,
        state.history,
        classes,
        task_type,
        state.best_epoch,
        len(train),
        len(y_val),
        norm,
        state,
    )


def project(head: MultiHead, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """float32 [rows, head.out_dim] projections, in eval mode without gradients.

    Inputs are scaled by the normalisation the head was fitted with (`head.input_norm`, set by
    `fit_head` and by `artifact.load_head`), so callers pass raw embeddings.
    """
    norm = getattr(head, "input_norm", None) or InputNorm()
    modalities = list(head.modalities)
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise ValueError(f"inputs lack modalities {missing}; the head takes {modalities}")
    n = len(inputs[modalities[0]])
    was_training = head.training
    head.eval()
    out = np.empty((n, head.out_dim), dtype=np.float32)
    try:
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                x = {
                    m: torch.from_numpy(
                        np.ascontiguousarray(inputs[m][lo : lo + batch_size], dtype=np.float32)
                    )
                    for m in modalities
                }
                out[lo : lo + batch_size] = head(norm.apply(x)).cpu().numpy()
    finally:
        head.train(was_training)
    return out


def clone_head(head: MultiHead) -> MultiHead:
    """A deep copy, input normalisation included."""
    return copy.deepcopy(head)
