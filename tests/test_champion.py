"""Champion registry, decision rule and the lease, on local disk and on a moto S3 server."""

from __future__ import annotations

import json
import threading

import pytest

from adapt.config import StorageConfig
from adapt.nightly.champion import Lease, LeaseHeld, Registry, decide
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
    uri = join(output, "registry", "lease.json")
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
    uri = join(output, "registry", "lease.json")
    dead = Lease(store, uri, ttl_s=0.01).acquire()
    import time

    time.sleep(0.05)
    live = Lease(store, uri, ttl_s=60).acquire()
    assert store.read_json(uri)["owner"] == live.owner
    with pytest.raises(LeaseHeld, match="lost the lease"):
        dead.renew()
    live.release()


def test_registry_promotes_atomically_and_keeps_history(root):
    store, output = root
    reg = Registry(store, output)
    assert reg.champion() is None
    reg.promote({"head": "h1", "scores": {"t": 0.5}})
    reg.record({"run_id": "r1", "promote": True})
    reg.record({"run_id": "r2", "promote": False})
    assert reg.champion()["head"] == "h1"
    assert [h["run_id"] for h in reg.history()] == ["r1", "r2"]
    json.dumps(reg.history())


def test_decision_rule():
    assert decide(None, {"a": 0.5}, 0.01, 0.02)["promote"]
    up = decide({"a": 0.50, "b": 0.60}, {"a": 0.55, "b": 0.60}, margin=0.01, tolerance=0.02)
    assert up["promote"] and abs(up["mean_gain"] - 0.025) < 1e-12
    small = decide({"a": 0.50}, {"a": 0.505}, margin=0.01, tolerance=0.02)
    assert not small["promote"] and "below the margin" in small["reason"]
    drop = decide({"a": 0.50, "b": 0.60}, {"a": 0.65, "b": 0.55}, margin=0.01, tolerance=0.02)
    assert not drop["promote"] and "task b drops" in drop["reason"]
