"""Champion registry, decision rule and the lease, on local disk and on a moto S3 server."""

from __future__ import annotations

import json
import threading

import pytest

from adapt.config import StorageConfig
from adapt.lease import Lease, LeaseHeld
from adapt.nightly.champion import Registry, decide
from adapt.storage import Storage, join


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return Storage(), str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("moto_server")
    return Storage(StorageConfig(endpoint_url=endpoint)), f"{bucket}/out"


def test_only_one_of_many_concurrent_takers_gets_the_lease(root):
    store, output = root
    uri = join(output, "registry", "lease")
    winners, losers = [], []
    barrier = threading.Barrier(6)

    def take():
        lease = Lease(store, uri, ttl_s=60)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld as e:
            losers.append(str(e))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 5
    assert "another run holds" in losers[0] and "Nothing was changed" in losers[0]
    winners[0].release()
    Lease(store, uri, ttl_s=60).acquire().release()  # free again after release


def test_an_expired_lease_is_taken_over(root):
    store, output = root
    uri = join(output, "registry", "lease")
    dead = Lease(store, uri, ttl_s=0.01).acquire()
    import time

    time.sleep(0.05)
    live = Lease(store, uri, ttl_s=60).acquire()
    assert live.state()[1]["owner"] == live.owner
    with pytest.raises(LeaseHeld, match="lost the lease"):
        dead.renew()
    live.release()


def test_registry_promotes_atomically_and_keeps_history(root):
    store, output = root
    reg = Registry(store, output)
    lease = reg.lease(60).acquire()
    assert reg.champion() is None
    h1 = reg.record({"run_id": "r1", "promote": True, "champion_record": {"head": "h1"}})
    reg.promote({"head": "h1", "scores": {"t": 0.5}}, lease, h1, expected=None)
    reg.record({"run_id": "r2", "promote": False})
    assert reg.champion()["head"] == "h1" and reg.champion()["history"] == h1
    # A run that compared against no champion (or another one) moves nothing.
    with pytest.raises(RuntimeError, match="the champion changed"):
        reg.promote({"head": "h3"}, lease, h1, expected=None)
    assert reg.champion()["head"] == "h1"
    assert [h["run_id"] for h in reg.history()] == ["r1", "r2"]
    json.dumps(reg.history())
    lease.release()


def test_a_promotion_recorded_but_not_applied_is_completed(root):
    """A night killed between its history record and the champion pointer: the next night's
    recover applies the recorded promotion; a champion.json cut short is rebuilt from history."""
    store, output = root
    reg = Registry(store, output)
    lease = reg.lease(60).acquire()
    h1 = reg.record({"run_id": "r1", "promote": True, "champion_record": {"head": "h1"}})
    reg.promote({"head": "h1", "promoted_at": "2026-01-01"}, lease, h1, expected=None)
    rec = {"head": "h2", "promoted_at": "2026-01-02"}
    h2 = reg.record({"run_id": "r2", "promote": True, "champion_record": rec})
    # ...killed here: champion.json still names h1.
    assert reg.champion()["head"] == "h1"
    assert reg.recover(lease)["head"] == "h2" and reg.champion()["history"] == h2
    assert reg.recover(lease)["head"] == "h2"  # nothing left to do
    store.write_bytes(join(output, "registry", "champion.json"), b'{"head": "h')
    assert reg.champion()["head"] == "h2"
    lease.release()


def test_the_lease_survives_a_lost_reply_and_truncated_generations(root):
    store, output = root
    uri = join(output, "registry", "lease")
    first = Lease(store, uri, ttl_s=60)
    # The store applied the create but its reply was lost: the retry's 412 reads as ours.
    body = first._body()
    store.create_exclusive(join(uri, "000000000001.json"), body)
    assert first._create(1) and Lease(store, uri, ttl_s=60)._create(1) is False
    first.generation = 1
    first.renew()
    first.release()
    # A generation cut short by a crash is taken as free, not a failure for every later night.
    store.write_bytes(join(uri, "000000000009.json"), b'{"owner": "x", "tok')
    taker = Lease(store, uri, ttl_s=60).acquire()
    assert taker.generation == 10
    taker.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(root, tmp_path):
    import subprocess
    import sys

    store, output = root
    uri = join(output, "registry", "lease")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    lease = Lease(store, uri, ttl_s=3600)
    lease.acquire()
    top, body = lease.state()
    # Rewrite the holder as the exited process: same host, its pid gone.
    body = {**body, "pid": int(dead.stdout), "token": "other"}
    store.create_exclusive(join(uri, f"{top + 1:012d}.json"), json.dumps(body).encode())
    taker = Lease(store, uri, ttl_s=60).acquire()
    assert taker.generation == top + 2
    with pytest.raises(LeaseHeld, match="lost the lease"):
        lease.renew()
    taker.release()


def test_decision_rule():
    assert decide(None, {"a": 0.5}, 0.01, 0.02)["promote"]
    up = decide({"a": 0.50, "b": 0.60}, {"a": 0.55, "b": 0.60}, margin=0.01, tolerance=0.02)
    assert up["promote"] and abs(up["mean_gain"] - 0.025) < 1e-12
    small = decide({"a": 0.50}, {"a": 0.505}, margin=0.01, tolerance=0.02)
    assert not small["promote"] and "below the margin" in small["reason"]
    drop = decide({"a": 0.50, "b": 0.60}, {"a": 0.65, "b": 0.55}, margin=0.01, tolerance=0.02)
    assert not drop["promote"] and "task b drops" in drop["reason"]
