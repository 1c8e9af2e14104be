"""What to deploy, per task: the recommended pair as a user builds it outside the score stage.

The score stage fits its heads inside each fold; what a user deploys is a head the train stage
fitted on every labelled row, applied by the apply stage. For a recommended `projected:*` pair,
this names the head under the output root when its recipe matches (same head mode, same label
column), or the commands that build one that does. For a raw or PCA pair there is no head: it
says which vectors to feed the classifier.
"""

from __future__ import annotations

from adapt import layout
from adapt.config import Config
from adapt.score.representations import HEAD, PCA, PROJECTED, RAW, family
from adapt.storage import Storage


def latest_head(store: Storage, output: str) -> dict | None:
    """The card of the newest completed head under `output` with its folder, or None."""
    from adapt.train.artifact import HeadNotFoundError, resolve_head_uri

    try:
        folder = resolve_head_uri(store, output)
    except HeadNotFoundError:
        return None
    card = store.read_json_or_none(layout.head_card(folder))
    return {**card, "folder": folder} if card else None


def _config_arg(config: Config) -> str:
    return config._source or "CONFIG.yaml"


def _vectors(rep: str, pca_k: int | None) -> str:
    variant = rep.partition(":")[2]
    what = (
        "every modality's vectors side by side, each modality scaled to unit total variance "
        "on the training rows"
        if variant == "concat"
        else f"the {variant} vectors"
    )
    if family(rep) == PCA:
        return f"the first {pca_k} principal components (fitted on the training rows) of {what}"
    return f"{what}, as the extract stage wrote them"


def deployment(
    config: Config,
    store: Storage,
    tasks: list[dict],
    recommendation: dict[str, dict],
    heads_meta: list[dict],
    pca_k: int | None,
) -> dict[str, dict]:
    """Per task with a recommended pair: what to feed which classifier, the head folder when the
    pair needs one, and the commands that build and apply it."""
    cfg = _config_arg(config)
    head = None
    out = {}
    for t in tasks:
        pair = (recommendation.get(t["name"]) or {}).get("pair")
        if not pair:
            continue
        rep, clf = pair["representation"], pair["classifier"]
        entry: dict = {"representation": rep, "classifier": clf, "head": None, "commands": []}
        fam = family(rep)
        if fam in (RAW, PCA):
            entry["note"] = (
                f"no head: fit `{clf}` on {_vectors(rep, pca_k)}; the embeddings are under "
                f"{layout.embeddings_dir(config.output)}"
            )
        elif fam == PROJECTED:
            mode = rep.partition(":")[2]
            head = head if head is not None else (latest_head(store, config.output) or {})
            fits = (
                bool(head)
                and (head.get("train") or {}).get("mode") == mode
                and head.get("label_column") == t["label_column"]
            )
            if fits:
                entry["head"] = {"folder": head["folder"], "run_id": head["run_id"]}
                entry["commands"] = [
                    f"adapt apply --config {cfg} --set apply.head={head['folder']}"
                ]
                entry["note"] = (
                    f"the head {head['folder']} (trained on every labelled row, mode {mode}, "
                    f"labels `{t['label_column']}`) projects the embeddings; fit `{clf}` on its "
                    "outputs"
                )
            else:
                train = f"adapt train --config {cfg} --set train.mode={mode}"
                if t["label_column"] != config.train.label_column:
                    train += f" --set train.label_column={t['label_column']}"
                entry["commands"] = [train, f"adapt apply --config {cfg}"]
                have = (
                    f"the latest head under {config.output} ({head['folder']}) has mode "
                    f"{(head.get('train') or {}).get('mode')} and labels "
                    f"`{head.get('label_column')}`"
                    if head
                    else f"no head under {config.output} yet"
                )
                entry["note"] = (
                    f"{have}: train one with mode {mode} on `{t['label_column']}`, apply it, "
                    f"then fit `{clf}` on its outputs"
                )
        elif fam == HEAD:
            given = next((h for h in heads_meta if h["representation"] == rep), None)
            uri = given["uri"] if given else rep
            entry["head"] = {
                "folder": uri,
                "run_id": ((given or {}).get("card") or {}).get("run_id"),
            }
            entry["commands"] = [f"adapt apply --config {cfg} --set apply.head={uri}"]
            entry["note"] = f"the given head {uri} projects the embeddings; fit `{clf}` on them"
        out[t["name"]] = entry
    return out
