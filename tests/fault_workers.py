"""Processes the fault suite starts and kills: `python -m tests.fault_workers <role> <json args>`.

lease   take and release a lease in a loop, appending each hold interval to a file; with
        `crash`, the last hold ends in os._exit without a release (a killed run)
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def lease(args: dict) -> None:
    from adapt.config import StorageConfig
    from adapt.lease import Lease
    from adapt.storage import Storage

    store = Storage(StorageConfig(**args.get("storage", {})))
    rng = random.Random(args["seed"])
    for i in range(args["rounds"]):
        held = Lease(store, args["folder"], ttl_s=args["ttl_s"]).acquire(wait_s=120, poll_s=0.02)
        start = time.time()
        time.sleep(rng.uniform(0.0, args["hold_s"]))
        end = time.time()
        with open(args["log"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "start": start, "end": end}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if args.get("crash") and i == args["rounds"] - 1:
            os._exit(0)  # no release: the next taker must see this process is gone
        held.release()


def cluster(args: dict) -> None:
    import signal
    import threading
    from pathlib import Path

    import ray
    from ray.cluster_utils import Cluster

    from adapt.config import load_config
    from adapt.extract.stage import run_extract
    from adapt.train.stage import run_train

    store_mb = 120 * 2**20
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store_mb}
    )
    cpus = args.get("cpus_per_node", 2)
    nodes = [cluster.add_node(num_cpus=cpus, object_store_memory=store_mb) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = load_config(args["config"])
    stage = args.get("stage", "extract")
    if stage == "train":
        run_extract(cfg)
        marks = Path(cfg.output) / "heads" / "_checkpoints"
        pattern, run = "*/epoch-*.safetensors", run_train
    else:
        marks = Path(cfg.output) / "embeddings" / "_commits"
        pattern, run = "*.json", run_extract
    killed = {}

    def kill_one_node() -> None:
        while not (marks.exists() and any(marks.glob(pattern))):
            time.sleep(0.05)
        try:
            cluster.add_node(num_cpus=cpus, object_store_memory=store_mb)  # joins as one is lost
        except Exception as e:  # noqa: BLE001 - reported with the case
            killed["join_error"] = repr(e)
        raylet = nodes[0].all_processes["raylet"][0].process
        killed.update(pid=raylet.pid, at=time.time(), seen=len(list(marks.glob(pattern))))
        os.kill(raylet.pid, signal.SIGKILL)

    threading.Thread(target=kill_one_node, daemon=True).start()
    attempts = []
    for _ in range(2):  # the job, then at most one re-submission
        try:
            result = run(cfg)
            figures = {
                k: getattr(result, k, None) for k in ("embedded", "rejected", "n_train", "n_val")
            }
            attempts.append(
                {"ok": True, **figures, "resumed_from": getattr(result, "resumed_from", None)}
            )
            break
        except Exception as e:  # noqa: BLE001 - the case reports what the first attempt raised
            attempts.append({"ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
    print("CLUSTER " + json.dumps({"killed": killed, "attempts": attempts}), flush=True)
    ray.shutdown()
    for node in list(cluster.worker_nodes):
        try:
            cluster.remove_node(node, allow_graceful=False)
        except Exception:  # noqa: BLE001 - the killed node's processes are gone already
            pass
    cluster.shutdown()


def always_promote(champion, challenger, margin, tolerance):
    """The decision rule with its verdict forced to promote (its numbers kept)."""
    from adapt.nightly.champion import decide

    return {**decide(champion, challenger, margin, tolerance), "promote": True}


def nightly(args: dict) -> None:
    import signal

    from adapt.config import load_config
    from adapt.nightly import champion, stage
    from adapt.nightly.stage import run_nightly

    stage.decide = always_promote
    if args.get("die_at") == "promote":

        def die(*_a, **_k):
            os.kill(os.getpid(), signal.SIGKILL)

        champion.Registry.promote = die
    result = run_nightly(load_config(args["config"]))
    print(result.describe(), flush=True)


if __name__ == "__main__":
    {"lease": lease, "cluster": cluster, "nightly": nightly}[sys.argv[1]](json.loads(sys.argv[2]))
