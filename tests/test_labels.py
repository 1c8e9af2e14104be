"""Task types and class ids (adapt.labels), on tiny fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from adapt.config import ScoreTask
from adapt.extract.readers import Shard, _rows_to_table
from adapt.extract.validate import Validator
from adapt.labels import build_task, encode_labels, infer_task_type, label_text, label_value


def test_infer_task_type():
    assert infer_task_type(["a", "b", "a"]) == "binary"
    assert infer_task_type(["a", "b", "c"]) == "multiclass"
    assert infer_task_type([["a"], [], ["a", "b"]]) == "multilabel"
    with pytest.raises(ValueError, match="mix lists"):
        infer_task_type(["a", ["b"]])
    with pytest.raises(ValueError, match="two or more classes"):
        infer_task_type(["a", "a"])
    with pytest.raises(ValueError, match="no label"):
        infer_task_type(["a", None])


def test_encode_labels():
    y, classes = encode_labels(["pos", "neg", "pos"], "binary")
    assert classes == ["neg", "pos"]
    assert y.tolist() == [1, 0, 1]

    y, classes = encode_labels(["c", "a", "b", "a"], "multiclass")
    assert classes == ["a", "b", "c"]
    assert y.tolist() == [2, 0, 1, 0]

    y, classes = encode_labels([["x", "y"], [], ["y"]], "multilabel")
    assert classes == ["x", "y"]
    assert y.tolist() == [[1, 1], [0, 0], [0, 1]]

    with pytest.raises(ValueError, match="multiclass"):
        encode_labels(["a", "b", "c"], "binary")
    with pytest.raises(ValueError, match="multilabel"):
        encode_labels([["a"], ["b"]], "multiclass")
    with pytest.raises(ValueError, match="unknown task type"):
        encode_labels(["a", "b"], "regression")


def test_label_text_makes_one_class_of_one_label():
    assert [label_text(v) for v in (1, 1.0, np.int64(1), np.float32(1.0), "1")] == ["1"] * 5
    assert label_text(float("nan")) is None and label_text(None) is None
    assert label_text(np.float64("nan")) is None
    assert [label_text(v) for v in (2.5, "cat", True)] == ["2.5", "cat", "true"]
    assert label_value([1.0, float("nan"), "b", None]) == ["1", "b"]
    assert label_value(("x",)) == ["x"]


def test_corpus_labels_are_read_as_their_text(tmp_path):
    shard = Shard(str(tmp_path / "p.parquet"), "parquet", "p")
    rows = [
        {"id": str(i), "text": "t", "label": v, "label_tags": tags}
        for i, (v, tags) in enumerate(
            [
                (1, [1, 2.0]),
                (1.0, ["2"]),
                (float("nan"), []),
                ("a", [float("nan"), "b"]),
                (None, None),
            ]
        )
    ]
    validator = Validator("p")
    table = _rows_to_table(validator.check(rows), shard, validator.label_kinds())
    assert table.column("label").to_pylist() == ["1", "1", None, "a", None]
    assert table.column("label_tags").to_pylist() == [["1", "2"], ["2"], [], ["b"], None]


def test_a_task_counts_1_and_1_0_as_one_class_and_nan_as_no_label():
    values = [1, 1.0, "1", 2, 2.0, np.int64(2), float("nan"), None]
    task = build_task(ScoreTask(), {"label": values}, default_min_count=2)
    assert task.classes == ["1", "2"] and task.task_type == "binary"
    assert task.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert task.dropped["unlabelled"] == 2
    tags = [[1, 2.0], [1.0, float("nan")], ["2"], [2]]
    multi = build_task(ScoreTask(label_column="label_tags"), {"label_tags": tags}, 2)
    assert multi.classes == ["1", "2"] and multi.y.tolist() == [[1, 1], [1, 0], [0, 1], [0, 1]]
