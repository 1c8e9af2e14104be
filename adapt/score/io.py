"""Everything the score stage reads and writes: input fingerprints, given heads, predictions, the report.

The report folder gets its plots and report.md first and report.json last, the completion marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import numpy as np

from adapt import layout
from adapt.embeddings import Embeddings
from adapt.score.plan import ScorePlan
from adapt.score.report.html import render_html
from adapt.score.report.markdown import render_markdown
from adapt.score.report.plots import plot_confusion, plot_embedding_2d, plot_gains, plot_scores
from adapt.score.report.schema import validate_report
from adapt.score.representations import HEAD
from adapt.storage import Storage


def input_fingerprint(store: Storage, output: str, emb: Embeddings, from_output: bool) -> dict:
    """What the report says of its inputs: the embeddings manifest's identity (from_output, when
    the embeddings were read from `output`), else what the given embeddings say of themselves."""
    ids = hashlib.sha256("\n".join(map(str, emb.ids)).encode()).hexdigest()
    manifest = emb.manifest
    if not from_output:
        return {"rows": len(emb), "encoders": manifest.get("fingerprints", {}), "ids_sha256": ids}
    raw = store.read_bytes(layout.manifest(output))
    return {
        "embeddings_manifest": layout.manifest(output),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "ids_sha256": ids,
        "corpus": manifest.get("corpus"),
        "encoders": manifest.get("fingerprints", {}),
        "rows": len(emb),
        "dropped_incomplete": manifest.get("dropped_incomplete", 0),
        "written_at": manifest.get("written_at"),
        "adapt_version": manifest.get("adapt_version"),
    }


def load_heads(
    store: Storage,
    uris: list[str],
    features: dict[str, np.ndarray],
    fingerprints: dict | None = None,
) -> tuple[dict, list[dict]]:
    """Apply each given head to every row once; names are unique and safe for report keys.
    `fingerprints`: the embeddings' encoders, which must be each head's (`check_encoders`)."""
    # Imported here: a head needs torch, which a score run without given heads does without.
    from adapt.train.artifact import load_head

    arrays, meta, used = {}, [], set()
    for uri in uris:
        head = load_head(uri, store, fingerprints, "the embeddings scored")
        card = getattr(head, "card", None)
        if isinstance(card, dict):  # the per-epoch history and weights layout stay in the card
            card = {k: v for k, v in card.items() if k not in ("history", "head", "versions")}
        card = json.loads(json.dumps(card, default=str)) if card is not None else None
        name = (card or {}).get("run_id") if isinstance(card, dict) else None
        name = str(name or os.path.basename(uri.rstrip("/")) or "head").replace(":", "_")
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        arrays[f"{HEAD}:{name}"] = np.asarray(head(features), dtype=np.float32)
        meta.append(
            {
                "representation": f"{HEAD}:{name}",
                "uri": uri,
                "card": card,
                "note": "trained outside this run: it may have seen rows that are test rows here, "
                "so its scores can be optimistic",
            }
        )
    return arrays, meta


_SEP = "|"  # task names and representations never hold it (see ScoreTask.name)


def predictions_npz(plan: ScorePlan, preds: dict[tuple, np.ndarray]) -> bytes:
    """Every cell's predictions and every fold's row ids and true labels, as one .npz file.

    Arrays: `pred|TASK|REPRESENTATION|CLASSIFIER|FOLD` (fits x rows, or fits x rows x labels
    for multilabel), `ids|TASK|FOLD` and `y|TASK|FOLD` for the fold's scored rows; FOLD is an
    outer fold's number or "val<i>[.<j>]". Class ids index the task's classes in report.json."""
    arrays: dict[str, np.ndarray] = {}
    for task in plan.tasks:
        for fold in plan.folds[task.name]:
            key = f"{task.name}{_SEP}{fold.label}"
            arrays[f"ids{_SEP}{key}"] = np.asarray(plan.ids[fold.rows_test]).astype(str)
            arrays[f"y{_SEP}{key}"] = fold.y_test
    for (task, rep, clf, fold), y_pred in preds.items():
        arrays[_SEP.join(["pred", task, rep, clf, str(fold)])] = y_pred.astype(np.int32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_predictions(
    store: Storage, report_dir: str, plan: ScorePlan, preds: dict[tuple, np.ndarray]
) -> str:
    """predictions.npz beside the report (`predictions_npz`); returns its URI."""
    uri = layout.report_file(report_dir, layout.PREDICTIONS_FILE)
    store.write_bytes(uri, predictions_npz(plan, preds))
    return uri


def read_predictions(store: Storage, report_dir: str) -> dict[str, dict]:
    """predictions.npz of a report as {"pred": {(task, rep, classifier, fold): fits x rows},
    "ids": {(task, fold): row ids}, "y": {(task, fold): true labels}}; folds as in report rows
    (int for outer folds, "val<i>[.<j>]" for validation splits)."""
    out: dict[str, dict] = {"pred": {}, "ids": {}, "y": {}}
    with np.load(
        io.BytesIO(store.read_bytes(layout.report_file(report_dir, layout.PREDICTIONS_FILE)))
    ) as npz:
        for name in npz.files:
            kind, *key = name.split(_SEP)
            fold = key[-1]
            key[-1] = int(fold) if fold.isdigit() else fold
            out[kind][tuple(key)] = npz[name]
    return out


def json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_report(
    store: Storage,
    report_dir: str,
    report: dict,
    samples: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    plots: bool = True,
) -> list[str]:
    """Validate, then write plots, report.md, report.html (plots embedded) and, last,
    report.json; return the URIs written."""
    validate_report(report)
    written, figures = [], {}
    if plots:
        figures = {
            "f1_by_representation.png": plot_scores(report),
            "gains.png": plot_gains(report),
        }
        confusion = plot_confusion(report)
        if confusion:
            figures["confusion.png"] = confusion
        if samples:
            figures["embedding_2d.png"] = plot_embedding_2d(samples, report["tasks"][0])
        for name, data in figures.items():
            uri = layout.report_file(report_dir, name)
            store.write_bytes(uri, data)
            written.append(uri)
    markdown = render_markdown(report, list(figures))
    uri = layout.report_file(report_dir, layout.REPORT_MD)
    store.write_bytes(uri, markdown.encode())
    written.append(uri)
    uri = layout.report_file(report_dir, layout.REPORT_HTML)
    page = render_html(markdown, f"Score report {report['run_id']}", figures)
    store.write_bytes(uri, page.encode())
    written.append(uri)
    uri = layout.report_file(report_dir, layout.REPORT_JSON)
    store.write_json(uri, report)  # last: the completion marker
    written.append(uri)
    return written
