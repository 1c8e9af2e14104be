"""Labels as tasks see them: task types, class ids, and a task built from a label column.

Class ids index the sorted class names that `encode_labels` returns; every scoring and training
function takes those ids, never names. `build_task` turns one `score.tasks` entry into a `Task`
(the kept rows, their ids, what was dropped and why); train, score and nightly all use it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # adapt.config imports the classifier registry, which imports this module
    from adapt.config import ScoreTask

TASK_TYPES = ("binary", "multiclass", "multilabel")


def check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}: use one of {list(TASK_TYPES)}")


def label_text(value: Any) -> str | None:
    """One label as the text every stage compares: None for a missing one (None, NaN), an
    integral number without its fraction (1 and 1.0 are one class, "1"), anything else as str.

    A label column read from a CSV manifest or a pandas-written Parquet file holds numbers and
    NaN where a user wrote integers and left cells empty; str() alone made "nan" a class and
    1 and 1.0 two classes.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return label_text(value.item())
    return value if isinstance(value, str) else str(value)


def label_value(value: Any) -> str | list[str] | None:
    """A row's label (`label_text`), or its list of labels with the missing ones left out."""
    if isinstance(value, list | tuple | np.ndarray):
        return [text for v in value if (text := label_text(v)) is not None]
    return label_text(value)


def _is_multi(label: Any) -> bool:
    return isinstance(label, list | tuple | np.ndarray)


def _label_name(label: Any, row: int) -> str:
    if label is None or (isinstance(label, float) and math.isnan(label)):
        raise ValueError(f"row {row} has no label: drop unlabelled rows before scoring")
    return label_text(label)


def infer_task_type(labels: Sequence[Any]) -> str:
    """Guess the task type from raw labels.

    A list (or tuple) per row means "multilabel"; otherwise two distinct labels mean "binary" and
    more mean "multiclass".
    """
    if len(labels) == 0:
        raise ValueError("no labels: the task has no rows")
    multi = [_is_multi(x) for x in labels]
    if all(multi):
        return "multilabel"
    if any(multi):
        row = multi.index(not multi[0])
        raise ValueError(
            f"labels mix lists and single values (row 0: {labels[0]!r}, row {row}: {labels[row]!r}):"
            " give every row a list of labels for a multi-label task, or one label otherwise"
        )
    n_classes = len({_label_name(x, i) for i, x in enumerate(labels)})
    if n_classes < 2:
        raise ValueError(f"every row has the label {labels[0]!r}: a task needs two or more classes")
    return "binary" if n_classes == 2 else "multiclass"


def encode_labels(
    labels: Sequence[str] | Sequence[Sequence[str]], task_type: str
) -> tuple[np.ndarray, list[str]]:
    """Turn raw labels into class ids and the sorted class names.

    binary / multiclass: y is an int64 vector of indices into `classes`. For binary tasks the
    positive class (id 1) is the second name in sorted order, e.g. "pos" of ("neg", "pos").
    multilabel: y is an int64 (rows x classes) 0/1 matrix; a row may carry no label at all.
    """
    check_task_type(task_type)
    if len(labels) == 0:
        raise ValueError("no labels: the task has no rows")
    if task_type == "multilabel":
        rows: list[set[str]] = []
        for i, x in enumerate(labels):
            if not _is_multi(x):
                raise ValueError(
                    f"row {i}: a multilabel task needs a list of labels per row, got {x!r};"
                    " wrap single labels in a list or use task type 'binary'/'multiclass'"
                )
            rows.append({_label_name(v, i) for v in x})
        classes = sorted(set().union(*rows))
        if not classes:
            raise ValueError("no row carries any label: a multilabel task needs at least one label")
        index = {c: j for j, c in enumerate(classes)}
        y = np.zeros((len(rows), len(classes)), dtype=np.int64)
        for i, row in enumerate(rows):
            y[i, [index[c] for c in row]] = 1
        return y, classes

    names = []
    for i, x in enumerate(labels):
        if _is_multi(x):
            raise ValueError(
                f"row {i} holds a list of labels {x!r} but the task type is {task_type!r}:"
                " use task type 'multilabel'"
            )
        names.append(_label_name(x, i))
    classes = sorted(set(names))
    if task_type == "binary" and len(classes) != 2:
        raise ValueError(
            f"a binary task needs exactly 2 classes, found {len(classes)} ({classes[:10]}):"
            " use task type 'multiclass'" + (" or add the other class" if len(classes) < 2 else "")
        )
    if len(classes) < 2:
        raise ValueError(
            f"every row has the label {classes[0]!r}: a task needs two or more classes"
        )
    index = {c: j for j, c in enumerate(classes)}
    return np.array([index[c] for c in names], dtype=np.int64), classes


def encode_with_classes(
    labels: Sequence[Any], task_type: str, classes: Sequence[str]
) -> np.ndarray:
    """Class ids (or a multi-hot matrix) against a fixed class list, as `encode_labels` returns.

    Workers that hold a shard of the rows must use the class list of the whole data set, or the
    same class would get different ids on different workers.
    """
    index = {c: i for i, c in enumerate(classes)}
    try:
        if task_type == "multilabel":
            y = np.zeros((len(labels), len(classes)), dtype=np.int64)
            for i, row in enumerate(labels):
                y[i, [index[label_text(v)] for v in row]] = 1
            return y
        return np.array([index[label_text(v)] for v in labels], dtype=np.int64)
    except KeyError as e:
        raise ValueError(
            f"label {e.args[0]!r} is not one of the task's classes {list(classes)}"
        ) from e


@dataclass
class Task:
    """One task's labels over the rows it keeps (rows with no label, or of a dropped class, go)."""

    name: str
    label_column: str
    task_type: str
    classes: list[str]
    y: np.ndarray  # class ids [n], or a 0/1 matrix [n, classes] for multilabel
    rows: np.ndarray  # index of each kept row in the embeddings
    labels: list  # the kept rows' labels as class names (lists for multilabel): what heads fit on
    positive: str | None = None
    dropped: dict = field(default_factory=dict)  # {"unlabelled": n, "classes": {name: rows}}
    # Set when the task holds a sample of its rows: {"rows", "of", "max_rows", "seed"}.
    sample: dict | None = None

    def subset(self, keep: np.ndarray, sample: dict) -> Task:
        """The task on the rows where `keep` is true (a boolean mask over `rows`)."""
        return replace(
            self,
            y=self.y[keep],
            rows=self.rows[keep],
            labels=[lab for lab, k in zip(self.labels, keep, strict=True) if k],
            sample=sample,
        )

    def meta(self) -> dict[str, Any]:
        counts = (
            self.y.sum(axis=0)
            if self.y.ndim == 2
            else np.bincount(self.y, minlength=len(self.classes))
        )
        return {
            "name": self.name,
            "label_column": self.label_column,
            "type": self.task_type,
            "positive": self.positive,
            "n_rows": len(self.rows),
            "n_classes": len(self.classes),
            "class_counts": {c: int(n) for c, n in zip(self.classes, counts, strict=True)},
            "dropped": self.dropped,
            "sample": self.sample,
        }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def build_task(spec: ScoreTask, columns: dict[str, list], default_min_count: int) -> Task:
    """Turn a label column into a task: type, kept rows, class ids; rare classes dropped.

    min_class_count (default `default_min_count`, the number of folds) drops classes with fewer
    rows: for single-label tasks their rows go, for multilabel tasks only the label is removed from
    the rows that carry it (the rows stay, possibly with no label).
    """
    name = spec.task_name
    if spec.label_column not in columns:
        have = sorted(c for c in columns if c != "split")
        raise ValueError(
            f"task {name!r}: no label column {spec.label_column!r} in the embeddings; they have "
            f"{have}. Fix score.tasks[].label_column, or re-run extract on a corpus with it"
        )
    values = columns[spec.label_column]
    keep = [i for i, v in enumerate(values) if not _missing(v)]
    unlabelled = len(values) - len(keep)
    values = [values[i] for i in keep]
    if not values:
        raise ValueError(f"task {name!r}: column {spec.label_column!r} has no labelled row")
    min_count = spec.min_class_count or default_min_count
    if spec.positive is not None:
        return _one_vs_rest(spec, values, keep, unlabelled, min_count)
    task_type = infer_task_type(values) if spec.type == "auto" else spec.type
    if task_type == "multilabel":
        y, classes, rows, labels, small = _multilabel(spec, values, keep, min_count)
    else:
        y, classes, rows, labels, small, task_type = _single_label(
            spec, values, keep, min_count, task_type
        )
    dropped = {"unlabelled": unlabelled, "classes": dict(sorted(small.items()))}
    return Task(name, spec.label_column, task_type, classes, y, rows, labels, None, dropped)


def _one_vs_rest(
    spec: ScoreTask, values: list, keep: list[int], unlabelled: int, min_count: int
) -> Task:
    """`spec.positive` against every other class: a binary task over every labelled row."""
    name = spec.task_name

    def hit(v: Any) -> bool:
        if isinstance(v, list | tuple | np.ndarray):
            return spec.positive in [label_text(x) for x in v]
        return label_text(v) == spec.positive

    hits = np.array([hit(v) for v in values])
    if not hits.any():
        seen = sorted(
            {label_text(x) for v in values for x in (v if isinstance(v, list) else [v])} - {None}
        )
        raise ValueError(
            f"task {name!r}: positive class {spec.positive!r} is in no row of "
            f"{spec.label_column!r}; classes there include {seen[:20]}"
        )
    negative = f"not {spec.positive}"
    classes = [negative, spec.positive]  # id 1 is the positive class, as for binary AUROC
    counts = {negative: int((~hits).sum()), spec.positive: int(hits.sum())}
    small = {c: n for c, n in counts.items() if n < min_count}
    if small:
        raise ValueError(
            f"task {name!r}: one-vs-rest needs {min_count} rows on each side "
            f"(min_class_count), got {counts}"
        )
    return Task(
        name,
        spec.label_column,
        "binary",
        classes,
        hits.astype(np.int64),
        np.array(keep, dtype=np.int64),
        [classes[int(h)] for h in hits],
        spec.positive,
        {"unlabelled": unlabelled, "classes": {}},
    )


def _multilabel(
    spec: ScoreTask, values: list, keep: list[int], min_count: int
) -> tuple[np.ndarray, list[str], np.ndarray, list, dict[str, int]]:
    """A list of labels per row; a rare label is removed from the rows that carry it."""
    name = spec.task_name
    if not all(isinstance(v, list | tuple | np.ndarray) for v in values):
        raise ValueError(
            f"task {name!r}: type multilabel needs a list of labels per row in "
            f"{spec.label_column!r}; its rows hold single labels: use type auto or multiclass"
        )
    counts = dict(Counter(c for v in values for c in set(label_value(v))))
    small = {c: n for c, n in counts.items() if n < min_count}
    labels = [sorted(set(label_value(v)) - set(small)) for v in values]
    if len(counts) - len(small) < 1:
        raise ValueError(
            f"task {name!r}: no label has {min_count} rows (min_class_count); counts {counts}"
        )
    y, classes = encode_labels(labels, "multilabel")
    return y, classes, np.array(keep, dtype=np.int64), labels, small


def _single_label(
    spec: ScoreTask, values: list, keep: list[int], min_count: int, task_type: str
) -> tuple[np.ndarray, list[str], np.ndarray, list, dict[str, int], str]:
    """One label per row; the rows of a rare class go."""
    name = spec.task_name
    names = []
    for i, v in enumerate(values):
        if isinstance(v, list | tuple | np.ndarray):
            raise ValueError(
                f"task {name!r}: row {keep[i]} of {spec.label_column!r} holds a list of labels "
                f"but the task type is {task_type}: use type multilabel (or auto)"
            )
        names.append(label_text(v))
    counts = dict(Counter(names))
    small = {c: n for c, n in counts.items() if n < min_count}
    kept = [i for i, c in enumerate(names) if c not in small]
    if len(counts) - len(small) < 2:
        raise ValueError(
            f"task {name!r}: fewer than 2 classes have {min_count} rows (min_class_count); "
            f"counts {dict(sorted(counts.items()))}"
        )
    labels = [names[i] for i in kept]
    if spec.type == "auto":  # decided on the classes that stay
        task_type = "binary" if len(counts) - len(small) == 2 else "multiclass"
    y, classes = encode_labels(labels, task_type)
    return y, classes, np.array([keep[i] for i in kept], dtype=np.int64), labels, small, task_type
