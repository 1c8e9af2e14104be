"""Progress on the driver (adapt.progress): log lines with rate and ETA off a terminal, nothing
when quiet, a tqdm bar on one, and counts posted by Ray workers that the driver follows."""

from __future__ import annotations

import logging
import time

from adapt.progress import Meter, _read, follow, post


def test_meter_logs_rate_and_eta_off_a_terminal(caplog):
    logger = logging.getLogger("adapt.test.progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        meter = Meter("score", 4, "cells", every_s=0.0, logger=logger, tty=False)
        assert meter.bar is None  # no tqdm redraws in a captured log
        time.sleep(0.05)
        meter.update(1, "1 fold")
        meter.update(4)  # the end: the stage's own summary says it, no line here
        meter.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("score: 1/4 cells, 00:00, ")
    assert "cells/s, ETA 00:0" in lines[0] and lines[0].endswith(", 1 fold")


def test_meter_is_silent_when_quiet(caplog):
    logger = logging.getLogger("adapt.test.progress.quiet")
    logger.setLevel(logging.WARNING)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        meter = Meter("extract", 3, "shards", every_s=0.0, logger=logger, tty=True)
        assert not meter.enabled and meter.bar is None
        meter.update(2)
    assert not caplog.records


def test_meter_draws_a_tqdm_bar_on_a_terminal(capsys):
    meter = Meter("train", 10, "epochs", logger=logging.getLogger("adapt"), tty=True)
    if not meter.enabled:  # the adapt logger is quieter than INFO in this process
        logging.getLogger("adapt").setLevel(logging.INFO)
        meter = Meter("train", 10, "epochs", logger=logging.getLogger("adapt"), tty=True)
    meter.update(3, "train_loss 4.85")
    assert meter.bar is not None and meter.bar.n == 3
    meter.close()
    assert "train" in capsys.readouterr().err


def test_follow_polls_what_workers_post(ray_local):
    import ray

    @ray.remote(num_cpus=0.1)
    def worker(key: str) -> None:
        for epoch in range(1, 6):
            post(key, epoch, f"epoch {epoch}")
            time.sleep(0.2)

    seen = []

    class Recorder(Meter):
        def update(self, done: int, postfix: str = "") -> None:
            seen.append((done, postfix))

    meter = Recorder("train", 5, "epochs", tty=False)
    meter.enabled = True
    with follow("train/test", meter, every_s=0.1):
        ray.get(worker.remote("train/test"))
        time.sleep(0.3)
    assert seen and seen[-1] == (5, "epoch 5")
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # counts only go forward
    assert _read("train/test") is None  # forgotten once followed
