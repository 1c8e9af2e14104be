"""Every path under a run's `output`: one function each, and nothing else in the project spells them.

    {output}/embeddings/<shard>.parquet            embedded rows of one input shard
    {output}/embeddings/_commits/<shard>.json      a shard's completion record
    {output}/embeddings/_manifest.json             written last: the extract run is complete
    {output}/embeddings/_staging/<wave>/...        pieces of a wave before their shards commit
    {output}/embeddings/_lease/                    held by the one extract run writing here
    {output}/rejects/<shard>.parquet               rows that could not be embedded, with reasons
    {output}/heads/<run-id>/head.safetensors       a trained head's weights
    {output}/heads/<run-id>/card.json              written last: the head is complete
    {output}/heads/latest.json                     the newest completed head
    {output}/heads/_checkpoints/<run-id>/          a train run's checkpoints and search choice
    {output}/projected/<run-id>/                   the apply stage's projections, manifest last
    {output}/reports/<run-id>/                     a score report, report.json last
    {output}/registry/                             nightly: champion, decision history, lease
    {output}/versions/<encoders-id>/               nightly: one output root per encoder version

Names beginning with `_` are bookkeeping: pyarrow, pandas and DuckDB skip them when they read a
folder, so `embeddings/` reads as its committed rows.
"""

from __future__ import annotations

from adapt.storage import basename, join

MANIFEST = "_manifest.json"
HEAD_FILE = "head.safetensors"
CARD_FILE = "card.json"
LATEST_FILE = "latest.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PREDICTIONS_FILE = "predictions.npz"


# -- extract --------------------------------------------------------------------------------------


def embeddings_dir(output: str) -> str:
    return join(output, "embeddings")


def embeddings_file(output: str, shard_key: str) -> str:
    return join(embeddings_dir(output), f"{shard_key}.parquet")


def manifest(output: str) -> str:
    """The extract run's completion marker, naming every committed file."""
    return join(embeddings_dir(output), MANIFEST)


def commits_dir(output: str) -> str:
    return join(embeddings_dir(output), "_commits")


def commit_record(output: str, shard_key: str) -> str:
    return join(commits_dir(output), f"{shard_key}.json")


def extract_lease(output: str) -> str:
    """Held by the one extract run writing to `output` (`adapt.lease`)."""
    return join(embeddings_dir(output), "_lease")


def staging_dir(output: str) -> str:
    return join(embeddings_dir(output), "_staging")


def wave_dir(output: str, wave: str) -> str:
    return join(staging_dir(output), wave)


def staged_piece(output: str, wave: str, shard_key: str, name: str) -> str:
    return join(wave_dir(output, wave), shard_key, f"{name}.parquet")


def wave_count(output: str, wave: str, shard_key: str) -> str:
    """Rows a read task counted for a shard with no index of its own (a WebDataset tar)."""
    return join(wave_dir(output, wave), "_counts", f"{shard_key}.json")


def rejects_dir(output: str) -> str:
    return join(output, "rejects")


def rejects_file(output: str, shard_key: str) -> str:
    return join(rejects_dir(output), f"{shard_key}.parquet")


# -- train ----------------------------------------------------------------------------------------


def heads_root(output: str) -> str:
    return join(output, "heads")


def head_dir(output: str, run_id: str) -> str:
    return join(heads_root(output), run_id)


def head_weights(run_dir: str) -> str:
    return join(run_dir, HEAD_FILE)


def head_card(run_dir: str) -> str:
    """A head's completion marker."""
    return join(run_dir, CARD_FILE)


def latest_pointer(heads_dir: str) -> str:
    """The pointer to the newest completed head in a heads folder."""
    return join(heads_dir, LATEST_FILE)


def latest_head(output: str) -> str:
    return latest_pointer(heads_root(output))


def checkpoints_dir(output: str, run_id: str) -> str:
    return join(heads_root(output), "_checkpoints", run_id)


def checkpoint_file(checkpoints: str, epoch: int) -> str:
    return join(checkpoints, f"epoch-{epoch:05d}.safetensors")


def checkpoint_pointer(checkpoints: str) -> str:
    """Written after each checkpoint: which one is newest."""
    return join(checkpoints, LATEST_FILE)


def search_choice(output: str, run_id: str) -> str:
    """The hyper-parameter search's trials and choice, reused by a resumed run."""
    return join(checkpoints_dir(output, run_id), "search.json")


# -- apply ----------------------------------------------------------------------------------------


def projected_dir(output: str, run_id: str) -> str:
    return join(output, "projected", run_id)


def projected_file(dest: str, embeddings_file: str) -> str:
    """The projections of one embeddings file: the same file name, under the apply folder."""
    return join(dest, basename(embeddings_file))


def projected_manifest(dest: str) -> str:
    return join(dest, MANIFEST)


def projected_commit(dest: str, embeddings_file: str) -> str:
    """The record that one projected file is whole, written after it."""
    return join(dest, "_commits", basename(embeddings_file).rsplit(".", 1)[0] + ".json")


# -- score ----------------------------------------------------------------------------------------


def report_dir(output: str, run_id: str) -> str:
    return join(output, "reports", run_id)


def report_file(report_dir: str, name: str) -> str:
    """A file of a report folder: REPORT_JSON (written last), REPORT_MD, PREDICTIONS_FILE, a plot."""
    return join(report_dir, name)


# -- nightly --------------------------------------------------------------------------------------


def registry_dir(output: str) -> str:
    return join(output, "registry")


def champion(output: str) -> str:
    return join(registry_dir(output), "champion.json")


def history_dir(output: str) -> str:
    return join(registry_dir(output), "history")


def history_record(output: str, stamp: str, run_id: str) -> str:
    return join(history_dir(output), f"{stamp}-{run_id}.json")


def lease(output: str) -> str:
    """The nightly lease: a folder of generations (`adapt.lease`)."""
    return join(registry_dir(output), "lease")


def version_root(output: str, encoders_id: str) -> str:
    """The output root of one encoder version: a new encoder starts a new one."""
    return join(output, "versions", encoders_id)
