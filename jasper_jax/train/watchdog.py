"""No silent hangs: slow steps are named, a step that never finishes ends the run.

- `SlowStepMonitor`: a step slower than `watchdog.factor` x the running median of the steps so far logs a
  warning naming the process (a straggler host, a throttled chip, a slow file system). The first
  `watchdog.warmup_steps` steps (compilation, caches) are left out of the median.
- `HangGuard`: a daemon thread; once armed, if no step completes for `watchdog.hang_timeout_s` seconds (a
  collective whose peer is gone, a dead file system) it prints every thread's stack and ends the process
  with `EXIT_HANG`, rather than waiting for the scheduler's wall-clock limit. A lost peer is usually
  caught sooner by `jax.distributed`'s heartbeat (`distributed.heartbeat_timeout_s`), which ends the
  surviving processes with an error of its own.
- `end_after_failed_computation`: in a multi-process run, a failed computation (a collective whose peer
  reset the connection) ends this process at once with one line naming it and `EXIT_FAILED`, instead of
  a traceback followed by an abort in `jax.distributed`'s shutdown barrier (the peer is gone).
"""

from __future__ import annotations

import bisect
import faulthandler
import os
import sys
import threading
import time

from jasper_jax.errors import EXIT_FAILED, EXIT_HANG


class SlowStepMonitor:
    """Step durations on this process; `observe` returns the warning for a slow step, else None."""

    def __init__(self, factor: float, warmup_steps: int, process: int):
        self.factor, self.warmup_steps, self.process = factor, warmup_steps, process
        self.durations: list[float] = []  # sorted, after warm-up
        self.seen = 0
        self.clock = time.perf_counter()

    def restart_clock(self) -> None:
        """Work that is not a step happened (a checkpoint save): the next step is timed from now."""
        self.clock = time.perf_counter()

    def step_done(self, step: int) -> str | None:
        """`observe` the time since the previous completed step (or `restart_clock`)."""
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        return self.observe(step, seconds)

    def median(self) -> float | None:
        if not self.durations:
            return None
        middle = len(self.durations) // 2
        if len(self.durations) % 2:
            return self.durations[middle]
        return 0.5 * (self.durations[middle - 1] + self.durations[middle])

    def observe(self, step: int, seconds: float) -> str | None:
        self.seen += 1
        if self.seen <= self.warmup_steps or self.factor <= 0:
            return None
        median = self.median()
        bisect.insort(self.durations, seconds)
        if median is None or len(self.durations) < 3 or seconds <= self.factor * median:
            return None
        return (
            f"watchdog: process {self.process}: step {step} took {seconds:.3g} s, "
            f"{seconds / median:.1f}x the median step ({median:.3g} s; watchdog.factor={self.factor:g})"
        )


class HangGuard:
    """Ends the process if `beat()` is not called for `timeout_s` seconds while armed (0: never)."""

    def __init__(self, timeout_s: float, process: int, what: str = "a training step"):
        self.timeout_s, self.process, self.what = timeout_s, process, what
        self.last_beat = time.monotonic()
        self.armed = False
        self._stop = threading.Event()
        self._thread = None
        if timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="jasper-hang-guard", daemon=True)
            self._thread.start()

    def beat(self) -> None:
        """A step completed: arm the guard and restart its clock."""
        self.last_beat = time.monotonic()
        self.armed = True

    def disarm(self) -> None:
        """Long work that is not a step follows (a final checkpoint wait, the next stage's compilation)."""
        self.armed = False

    def _watch(self) -> None:
        period = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(period):
            if self.armed and time.monotonic() - self.last_beat > self.timeout_s:
                self._end()

    def _end(self) -> None:
        print(
            f"watchdog: process {self.process}: no progress for {self.timeout_s:g} s after {self.what} "
            "(watchdog.hang_timeout_s): a collective that never completes (a lost peer?) or a stuck "
            f"input; ending the run with exit code {EXIT_HANG}. Thread stacks follow.",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(EXIT_HANG)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def end_after_failed_computation(error: BaseException, process: int, process_count: int) -> None:
    """Print what failed, in one line, and end the process (exit code 1) without the shutdown barrier."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(
        f"jasper-jax train: process {process} of {process_count}: a computation failed ({first_line[:300]}). "
        "In a multi-process run this usually means another process was lost (see its log); the last "
        "complete checkpoint is kept: rerun the same command to resume.",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(EXIT_FAILED)
