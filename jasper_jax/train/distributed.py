"""Multi-host initialisation: `jax.distributed.initialize` from explicit values or the environment.

One process per host, each with all its local devices. Where the values come from, first match wins:
1. explicit arguments (the config's `distributed` block or the caller);
2. `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (set by launch/local.sh and by the
   Kubernetes JobSet manifest, where the process id is the pod's job-completion index);
3. SLURM (`SLURM_JOB_ID` with more than one task): JAX's own SLURM detection (launch/slurm.sbatch);
4. TPU VM pods (`TPU_WORKER_HOSTNAMES` or `CLOUD_TPU_TASK_ID` with several workers): JAX's own detection;
5. otherwise a single process: nothing to initialise.
On CPU the cross-process collectives use gloo (`jax_cpu_collectives_implementation`).
This must run before the first JAX computation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import jax

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedSetup:
    """How `initialize` found the cluster (`source`: explicit, env, slurm, tpu or single)."""

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def detect(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedSetup:
    """Decide where the cluster description comes from (pure: reads `environ`, starts nothing)."""
    env = os.environ if environ is None else environ
    if coordinator_address:
        if num_processes is None or process_id is None or num_processes < 1 or process_id < 0:
            raise ValueError(
                f"coordinator_address={coordinator_address!r} needs num_processes and process_id too "
                f"(got {num_processes}, {process_id})"
            )
        return DistributedSetup("explicit", coordinator_address, int(num_processes), int(process_id))
    if env.get("JAX_COORDINATOR_ADDRESS"):
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(name)]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not; set all three")
        return DistributedSetup(
            "env", env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        )
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistributedSetup("slurm")
    tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in tpu_hosts.split(",") if h]) > 1 or env.get("CLOUD_TPU_TASK_ID"):
        return DistributedSetup("tpu")
    return DistributedSetup("single")


_initialized: DistributedSetup | None = None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = 100,
    initialization_timeout_s: int = 300,
) -> DistributedSetup:
    """Initialise `jax.distributed` once per process (later calls return the first result).

    `heartbeat_timeout_s`: a process silent this long is declared lost, and the coordination service ends
    the others with an error (no hang until the scheduler's limit); `initialization_timeout_s`: how long
    to wait for every process to connect."""
    global _initialized
    if _initialized is not None:
        return _initialized
    setup = detect(coordinator_address, num_processes, process_id)
    timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_s, initialization_timeout=initialization_timeout_s)
    if setup.source != "single":
        platforms = os.environ.get("JAX_PLATFORMS", "")
        if platforms in ("cpu", "") and setup.source in ("explicit", "env"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if setup.source in ("explicit", "env"):
            if setup.num_processes and setup.num_processes > 1:
                jax.distributed.initialize(
                    coordinator_address=setup.coordinator_address,
                    num_processes=setup.num_processes,
                    process_id=setup.process_id,
                    **timeouts,
                )
        else:
            jax.distributed.initialize(**timeouts)
        log.info(
            "jax.distributed (%s): process %d of %d, %d local / %d global devices",
            setup.source,
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
    _initialized = setup
    return setup


def is_main_process() -> bool:
    """True on process 0 (the one that shows progress and writes metrics)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
