"""What the driver's environment passes to Ray workers: settings, never secrets unless asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from adapt.rayutil import is_secret, worker_env

SENTINEL = "sentinel-9f1c2e7a"
DRIVER = """
import logging, os, ray
from adapt.config import RayConfig
logging.basicConfig(level=logging.INFO)
from adapt.rayutil import init_ray

init_ray(RayConfig(num_cpus=1, object_store_memory_mb=100, forward_credentials={forward}))

@ray.remote(num_cpus=0.5)
def seen():
    print("WORKER-SAYS-hello")
    return {{k: os.environ.get(k) for k in ("ADAPT_PROBE", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")}}, \\
        ray.get_runtime_context().runtime_env.get("env_vars", {{}})

env, runtime = ray.get(seen.remote())
print("RESULT", env["ADAPT_PROBE"], sorted(runtime))
ray.shutdown()
"""


def test_secrets_are_left_out_unless_asked():
    environ = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": SENTINEL,
        "AWS_SESSION_TOKEN": SENTINEL,
        "HF_HOME": "/cache",
        "HF_TOKEN": SENTINEL,
        "ADAPT_CACHE": "/c",
        "ADAPT_DB_PASSWORD": SENTINEL,
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": "/bin",
    }
    assert worker_env(environ) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HOME": "/cache",
        "ADAPT_CACHE": "/c",
        "TRANSFORMERS_OFFLINE": "1",
    }
    forwarded = worker_env(environ, forward_credentials=True)
    assert forwarded["AWS_SECRET_ACCESS_KEY"] == SENTINEL and "PATH" not in forwarded
    assert is_secret("AWS_SECRET_ACCESS_KEY") and not is_secret("AWS_REGION")


def test_a_sentinel_secret_never_reaches_rays_logs_or_runtime_env():
    # Ray's sockets live under its temp dir, and a socket path may not pass 107 bytes: a short one.
    tmp_path = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp_path,
        "ADAPT_PROBE": "probe-1",
        "AWS_SECRET_ACCESS_KEY": SENTINEL,
        "HF_TOKEN": SENTINEL,
    }
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, "-c", DRIVER.format(forward=False)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # The setting reached the worker through its runtime environment; the secrets did not.
    result = next(line for line in run.stdout.splitlines() if line.startswith("RESULT"))
    assert result.startswith("RESULT probe-1 ") and "'ADAPT_PROBE'" in result
    assert "AWS_SECRET_ACCESS_KEY" not in result and "HF_TOKEN" not in result
    leaks = [
        str(p)
        for p in Path(tmp_path).rglob("*")
        if p.is_file() and SENTINEL.encode() in p.read_bytes()
    ]
    assert SENTINEL not in run.stdout + run.stderr
    # A local Ray keeps the workers' output off the console, in its session's logs, whose folder
    # the start-up line names.
    assert "WORKER-SAYS" not in run.stdout + run.stderr
    logs = run.stderr.split("its logs: ", 1)[1].split()[0]
    assert logs.startswith(tmp_path) and logs.endswith("/logs")
    assert any(
        b"WORKER-SAYS-hello" in p.read_bytes() for p in Path(logs).rglob("*.out") if p.is_file()
    )
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert leaks == []
