"""The JSON schema of report.json, and its validation (the report is checked before it is written)."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


_NUM = {"type": ["number", "null"]}


_METRICS = {
    "macro_f1": _NUM,
    "micro_f1": _NUM,
    "accuracy": _NUM,
    "auroc": _NUM,
    "per_class_f1": {"type": "object", "additionalProperties": _NUM},
}


_CELL_KEYS = {
    "task": {"type": "string"},
    "representation": {"type": "string"},
    "classifier": {"type": "string"},
    "status": {"enum": ["ok", "error"]},
    "dims": {"type": ["integer", "null"]},
    **_METRICS,
}


_FOLD_ROW = {  # one cell: a fold's test (or validation) rows
    "type": "object",
    "required": [
        "task",
        "representation",
        "classifier",
        "fold",
        "status",
        "macro_f1",
        "micro_f1",
        "accuracy",
        "auroc",
    ],
    "properties": {
        **_CELL_KEYS,
        "error": {"type": ["string", "null"]},
        "fit_s": _NUM,
        "predict_s": _NUM,
        "n_train": {"type": "integer"},
        "n_test": {"type": "integer"},
        "standardized": {"type": "boolean"},
        "notes": {"type": "string"},
        "worker": {"type": "integer", "description": "process id of the worker that ran it"},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "macro_f1_fits": {"type": "array", "items": _NUM},
    },
}


_MEAN_ROW = {  # one (task, representation, classifier) over folds
    "type": "object",
    "required": [
        "task",
        "representation",
        "classifier",
        "fold",
        "status",
        "n_folds",
        "macro_f1",
        "macro_f1_lo",
        "macro_f1_hi",
        "micro_f1",
        "micro_f1_lo",
        "micro_f1_hi",
    ],
    "properties": {
        **_CELL_KEYS,
        "fold": {"const": "mean"},
        "n_folds": {"type": "integer", "minimum": 0},
        "n_failed": {"type": "integer", "minimum": 0},
        **{f"{m}_{s}": _NUM for m in ("macro_f1", "micro_f1") for s in ("lo", "hi", "std")},
        "fit_s": _NUM,
        "predict_s": _NUM,
    },
}


def _rows(fold_schema: dict) -> dict:
    fold_row = {**_FOLD_ROW, "properties": {**_FOLD_ROW["properties"], "fold": fold_schema}}
    return {"type": "array", "items": {"oneOf": [fold_row, _MEAN_ROW]}}


def _gain_row(extra: dict[str, Any]) -> dict[str, Any]:
    """Schema of one gain row: a representation against a family's best, with `extra` fields
    (the classifier, or the classifiers averaged over) required as well."""
    return {
        "type": "object",
        "required": [
            "task",
            *extra,
            "representation",
            "baseline",
            "baseline_representation",
            "metric",
            "mean",
            "lo",
            "hi",
            "n_rows",
            "n_folds",
        ],
        "properties": {
            "task": {"type": "string"},
            **extra,
            "representation": {"type": "string"},
            "baseline": {"enum": ["raw", "pca"]},
            "baseline_representation": {"type": "string"},
            "metric": {"type": "string"},
            "mean": _NUM,
            "lo": _NUM,
            "hi": _NUM,
            "candidate_score": _NUM,
            "baseline_score": _NUM,
            "n_rows": {"type": "integer"},
            "n_folds": {"type": "integer"},
        },
    }


REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "adapt score report",
    "type": "object",
    "required": [
        "schema_version",
        "run_id",
        "created_at",
        "config",
        "inputs",
        "protocol",
        "tasks",
        "results",
        "validation",
        "gains",
        "recommendation",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "run_id": {"type": "string"},
        "created_at": {"type": "string", "description": "ISO 8601, UTC"},
        "adapt_version": {"type": "string"},
        "config": {"type": "object", "description": "the whole job configuration, as run"},
        "inputs": {
            "type": "object",
            "description": "fingerprints of the embeddings scored (from their manifest)",
            "required": ["rows", "encoders"],
            "properties": {
                "embeddings_manifest": {"type": "string"},
                "manifest_sha256": {"type": "string"},
                "ids_sha256": {"type": "string"},
                "rows": {"type": "integer"},
                "encoders": {"type": "object"},
            },
        },
        "protocol": {
            "type": "object",
            "required": [
                "n_folds",
                "scheme",
                "seed",
                "metric",
                "alpha",
                "n_boot",
                "classifiers",
                "representations",
            ],
            "properties": {
                "n_folds": {"type": "integer"},
                "scheme": {"enum": ["kfold", "repeated"]},
                "only_folds": {"type": ["array", "null"], "items": {"type": "integer"}},
                "seed": {"type": "integer"},
                "metric": {"enum": ["macro_f1", "micro_f1", "accuracy"]},
                "alpha": {"type": "number"},
                "n_boot": {"type": "integer"},
                "validation_folds": {"type": "integer"},
                "validation_fraction": {"type": "number"},
                "validation_rows": {"type": "integer"},
                "validation_splits": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
                "classifier_seeds": {"type": "integer", "minimum": 1},
                "seed_dependent": {"type": "array", "items": {"type": "string"}},
                "pca_k": {"type": "integer"},
                "classifiers": {"type": "array", "items": {"type": "string"}},
                "representations": {"type": "array", "items": {"type": "string"}},
            },
        },
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "label_column",
                    "type",
                    "n_rows",
                    "n_classes",
                    "class_counts",
                    "dropped",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "label_column": {"type": "string"},
                    "type": {"enum": ["binary", "multiclass", "multilabel"]},
                    "positive": {"type": ["string", "null"]},
                    "n_rows": {"type": "integer"},
                    "n_classes": {"type": "integer"},
                    "class_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "dropped": {"type": "object"},
                    "sample": {
                        "type": ["object", "null"],
                        "required": ["rows", "of", "max_rows", "seed"],
                    },
                },
            },
        },
        "heads": {
            "type": "array",
            "description": "heads given by URI; each may have seen rows that are test rows here",
            "items": {"type": "object", "required": ["representation", "uri", "note"]},
        },
        "results": {
            **_rows({"type": "integer", "minimum": 0}),
            "description": "test scores: one row per cell (fold = outer fold number) "
            "and one per (task, representation, classifier) with "
            "fold = 'mean' (mean over folds, lo/hi: corrected t interval over folds)",
        },
        "validation": {
            **_rows({"type": "string", "pattern": "^val[0-9]+([.][0-9]+)?$"}),
            "description": "validation scores (inner split of training rows), the "
            "only input of the recommendation",
        },
        "gains": {
            "type": "array",
            "description": "paired bootstrap interval of metric(representation) - "
            "metric(baseline_representation) on pooled out-of-fold predictions",
            "items": _gain_row({"classifier": {"type": "string"}}),
        },
        "mean_gains": {
            "type": "array",
            "description": "per task: paired bootstrap interval of the metric averaged over all "
            "classifiers, representation minus the baseline family's best (same row draws for "
            "every classifier)",
            "items": _gain_row({"classifiers": {"type": "array", "items": {"type": "string"}}}),
        },
        "recommendation": {
            "type": "object",
            "description": "task name -> the representation chosen on validation scores only",
            "additionalProperties": {
                "type": "object",
                "required": ["representation", "metric", "score", "basis", "by_classifier"],
                "properties": {
                    "representation": {"type": ["string", "null"]},
                    "metric": {"type": "string"},
                    "score": _NUM,
                    "basis": {"type": "string"},
                    "by_classifier": {"type": "object"},
                    "scores": {"type": "object", "additionalProperties": _NUM},
                    "pair": {
                        "type": ["object", "null"],
                        "description": "the (representation, classifier) pair to deploy, "
                        "chosen on validation scores",
                    },
                },
            },
        },
        "pair_verdict": {
            "type": "object",
            "description": "task name -> the recommended pair against the best raw pair (a "
            "tuned probe where the protocol has one, picked on the test rows) on the pooled "
            "test rows: mean, lo, hi of the gap, each side's score",
        },
        "confusion": {
            "type": "object",
            "description": "task name -> the recommended pair's confusion matrix on the pooled "
            "test rows (rows: true class, columns: predicted, in the task's class order), "
            "counts averaged over its fits; single-label tasks only",
            "additionalProperties": {
                "type": "object",
                "required": ["representation", "classifier", "matrix", "n_rows", "n_fits"],
                "properties": {
                    "matrix": {"type": "array", "items": {"type": "array", "items": _NUM}},
                    "n_rows": {"type": "integer"},
                    "n_fits": {"type": "integer"},
                },
            },
        },
        "deploy": {
            "type": "object",
            "description": "task name -> how to deploy the recommended pair: the vectors to feed "
            "the classifier, the head folder when it needs one (null: no head), the commands",
            "additionalProperties": {
                "type": "object",
                "required": ["representation", "classifier", "head", "commands", "note"],
                "properties": {
                    "head": {"type": ["object", "null"]},
                    "commands": {"type": "array", "items": {"type": "string"}},
                    "note": {"type": "string"},
                },
            },
        },
        "folds": {
            "type": "array",
            "description": "per (task, fold): how each representation "
            "was built (PCA k, head epochs, the head's hyper-parameter search, timings)",
        },
        "failures": {"type": "array"},
        "timings": {"type": "object", "additionalProperties": _NUM},
    },
}


def validate_report(report: dict) -> None:
    """Raise ValueError listing every place where `report` departs from REPORT_SCHEMA."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(REPORT_SCHEMA)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  - {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
            for e in errors[:20]
        ]
        raise ValueError(
            f"report does not match REPORT_SCHEMA ({len(errors)} problems):\n" + "\n".join(lines)
        )
