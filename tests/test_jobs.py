"""End to end: `ray job submit` of the real job entrypoint to a `ray start --head` local cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adapt.storage import Storage
from tests import corpus_fixtures as cf
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head --block` from this venv, stopped by killing its own process group."""
    port, dash = free_port(), free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--object-store-memory=200000000",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--temp-dir={temp}",
            # Own ports for every agent, so that another Ray on this machine cannot collide with it.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True
        )
        if probe.returncode == 0:
            break
        if proc.poll() is not None:
            pytest.fail("ray start --head exited")
        time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the Ray job server did not come up in 120 s")
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_ray_job_submit_extract(ray_cluster, tmp_path, tiny_models):
    address, env = ray_cluster
    corpus, output = tmp_path / "corpus", tmp_path / "out"
    n = cf.write_corpus(Storage(), str(corpus), "webdataset", n=12, n_shards=2)
    config = {
        "corpus": str(corpus),
        "output": str(output),
        "encoders": {"text": f"hf:{tiny_models['bert']}", "image": f"hf:{tiny_models['vit']}"},
        "extract": {"batch_size": 4, "max_reject_fraction": 0.5, "num_cpus_per_worker": 0.5},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "jobs/extract.py",
        "--config",
        str(tmp_path / "job.yaml"),
        "--json",
    ]
    for _ in range(30):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        # The job server answers before its agent is up on a busy machine; that refusal is final
        # for the request but not for the cluster, so ask again.
        if "No available agent to submit job" not in run.stderr:
            break
        time.sleep(2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "succeeded" in run.stdout
    manifest = json.loads((output / "embeddings" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["input_rows"] == n
    assert manifest["embedded"] + manifest["rejected"] == n
