"""Task types and class ids (adapt.labels), on tiny fixed inputs."""

from __future__ import annotations

import pytest

from adapt.labels import encode_labels, infer_task_type


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
