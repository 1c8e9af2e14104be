"""Connecting to Ray: the cluster a job was submitted to, a named address, or a local one."""

from __future__ import annotations

import logging
import os

from adapt.config import RayConfig

log = logging.getLogger("adapt")


def init_ray(config: RayConfig) -> None:
    """Connect once. A job submitted with `ray job submit` finds its cluster through RAY_ADDRESS."""
    import ray

    if ray.is_initialized():
        return
    # Workers must see the same storage and cache settings as the driver.
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("AWS_", "ADAPT_", "HF_")) or k in ("TRANSFORMERS_OFFLINE",)
    }
    runtime_env = {"env_vars": env} if env else None
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    object_store = (config.object_store_memory_mb or 0) * 1024 * 1024 or None
    ray.init(
        num_cpus=config.num_cpus,
        object_store_memory=object_store,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    log.info("started a local Ray with %s CPUs", config.num_cpus or os.cpu_count())
