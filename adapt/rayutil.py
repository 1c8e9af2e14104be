"""Connecting to Ray: the cluster a job was submitted to, a named address, or a local one."""

from __future__ import annotations

import logging
import os

from adapt.config import RayConfig

log = logging.getLogger("adapt")


# Environment variables that hold secrets never travel in a runtime environment unless the config
# says so (`ray.forward_credentials`): Ray writes runtime environments to every node's logs and
# shows them in `ray job` info. A secret is a name with one of these markers (AWS_SECRET_ACCESS_KEY,
# AWS_SESSION_TOKEN, HF_TOKEN, ...), or one listed here that has none.
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
SECRET_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID"})


def is_secret(name: str) -> bool:
    return name in SECRET_VARIABLES or any(m in name.upper() for m in SECRET_MARKERS)


def worker_env(environ: dict[str, str], forward_credentials: bool = False) -> dict[str, str]:
    """What workers must see of the driver's environment: storage endpoint and region, model
    caches and offline switches, adapt's own settings; secrets only with `forward_credentials`."""
    return {
        k: v
        for k, v in environ.items()
        if (k.startswith(("AWS_", "ADAPT_", "HF_")) or k == "TRANSFORMERS_OFFLINE")
        and (forward_credentials or not is_secret(k))
    }


def local_system_config(num_cpus: float | None) -> dict:
    """Raylet settings for a local Ray that runs Ray Data tasks of fractional CPUs.

    By default a raylet keeps as many idle workers as it has CPUs and kills the others after one
    idle second. Tasks of a quarter or half CPU run more workers than that at once, so workers
    were killed and started again all run long, each start importing torch again: on 2 CPUs a
    decode-bound extract ran at 150-200 rows/s with 30 worker starts and at 320-360 rows/s with
    14 once idle workers were kept (`make bench-extract`). A cluster started with `ray start`
    takes the same settings from `--system-config` (README, "Extract on accelerators").
    """
    cpus = int(num_cpus or os.cpu_count() or 1)
    return {"num_workers_soft_limit": 4 * cpus, "idle_worker_killing_time_threshold_ms": 60_000}


# Ray's driver-side loggers that report every dataset execution and Train run at INFO level.
RAY_LOGGERS = ("ray.data", "ray.train", "ray.tune")


def _quiet_driver() -> None:
    """Ray Data's progress bars and Ray's execution messages off this driver's console (they
    still go to the session's log files)."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # It warns, once per driver, that the bars are off: they are, on purpose.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def init_ray(config: RayConfig) -> None:
    """Connect once. A job submitted with `ray job submit` finds its cluster through RAY_ADDRESS."""
    import ray

    if ray.is_initialized():
        return
    # Workers must see the same storage and cache settings as the driver.
    env = worker_env(dict(os.environ), config.forward_credentials)
    runtime_env = {"env_vars": env} if env else None
    address = config.address or os.environ.get("RAY_ADDRESS")
    console = config.console if config.console is not None else bool(address)
    if not console:
        _quiet_driver()
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=console)
        return
    object_store = (config.object_store_memory_mb or 0) * 1024 * 1024 or None
    context = ray.init(
        _system_config=local_system_config(config.num_cpus),
        # A new local Ray of our own, never one that another process left on this machine (ray
        # would join it through /tmp/ray/ray_current_cluster, and refuse our num_cpus).
        address="local",
        num_cpus=config.num_cpus,
        object_store_memory=object_store,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=console,
        # Ray's own start-up lines; the line below says what a user needs.
        logging_level=logging.INFO if console else logging.WARNING,
    )
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    log.info(
        "started a local Ray with %s CPUs%s",
        config.num_cpus or os.cpu_count(),
        f"; its logs: {os.path.join(session, 'logs')}" if session and not console else "",
    )
