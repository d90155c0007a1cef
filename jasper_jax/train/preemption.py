"""Preemption: on SIGTERM every process stops at one agreed step, a checkpoint is saved there, and the run
exits with `EXIT_REQUEUE` (75) so that the launcher requeues the same command, which resumes.

SLURM (preemption or `--signal=TERM@N` before the time limit), Kubernetes (pod eviction) and TPU
maintenance events all send SIGTERM first and kill later. Where the notice comes from:
- several processes (`jax.distributed` initialised): JAX's preemption sync manager owns SIGTERM; a notice
  reaching any process is propagated to all, and `multihost_utils.reached_preemption_sync_point` returns
  True at the same step everywhere (the largest step any process had reached, plus one), so every
  process takes part in the same checkpoint;
- one process: a Python SIGTERM handler sets a flag, read at the next step boundary. A second SIGTERM
  is not caught (the default action: the process ends at once).

`PreemptionWatch.reached()` is called once per training step on every process, with one counter for the
whole run (stages included): the sync manager needs the same increasing numbers on every process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax

log = logging.getLogger(__name__)


def _sync_manager_available() -> bool:
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.preemption_sync_manager is not None


class PreemptionWatch:
    """Whether a preemption notice has arrived, answered at step boundaries alike on every process."""

    def __init__(self):
        self.calls = 0
        self.noticed = threading.Event()
        self._previous_handler = None
        self.multi_process = jax.process_count() > 1 and _sync_manager_available()
        if jax.process_count() > 1 and not self.multi_process:
            log.warning("JAX's preemption service is off (jax_enable_preemption_service): SIGTERM is not handled")
        elif not self.multi_process and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.noticed.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process

    def reached(self) -> bool:
        """True at the step where every process is to checkpoint and stop (call once per step)."""
        self.calls += 1
        if self.multi_process:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(self.calls)
        return self.noticed.is_set()

    def close(self) -> None:
        """Give SIGTERM back its previous handler (one process)."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


def send_debug_signal(name: str, step: int, when_step: int, process: int) -> None:
    """Tests: send this process signal `name` (TERM, KILL, ...) once `step == when_step`, on process
    `process` (-1: every process). `config.debug.signal_step` etc. (0: never)."""
    if when_step and step == when_step and process in (-1, jax.process_index()):
        print(f"debug: sending SIG{name} to process {jax.process_index()} after step {step}", flush=True)
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
