"""No silent hangs: a slow step is named (process and step), a step that never completes ends the process
with EXIT_HANG, and killing one of two training processes ends the other with a message and a non-zero
code within the configured timeouts (rather than hanging until the scheduler's limit)."""

import dataclasses
import subprocess
import sys
import time

import pytest

from jasper_jax.errors import EXIT_HANG
from jasper_jax.train import loop as loop_lib
from jasper_jax.train.settings import StageSettings, WatchdogSettings
from jasper_jax.train.watchdog import SlowStepMonitor
from tests.train.test_loop_overlap import FakeCheckpointer, State, Tagged, fake_step, run_settings
from tests.train.test_multiprocess import ARGS, ROOT, _env


def test_a_step_far_above_the_median_is_named_and_warm_up_steps_are_not():
    monitor = SlowStepMonitor(factor=5.0, warmup_steps=2, process=3)
    assert monitor.observe(1, 60.0) is None and monitor.observe(2, 40.0) is None  # compilation
    for step in range(3, 10):
        assert monitor.observe(step, 1.0 + 0.01 * step) is None
    assert monitor.observe(10, 4.9) is None  # under 5x the median
    warning = monitor.observe(11, 20.0)
    assert warning is not None and "process 3: step 11" in warning and "watchdog.factor=5" in warning
    assert SlowStepMonitor(factor=0.0, warmup_steps=0, process=0).observe(5, 1e9) is None  # 0: off


def test_the_training_loop_warns_about_its_slow_step(tmp_path, capsys, monkeypatch):
    """Fake steps whose 'device' takes 0.05 s, step 8 1.5 s (the wait is in fetching its metrics, as
    on a device that runs asynchronously)."""
    real_get = loop_lib.jax.device_get

    def device_get(tree):
        if isinstance(tree, Tagged):
            time.sleep(1.5 if tree.step == 8 else 0.05)
            tree = dict(tree)
        return real_get(tree)

    monkeypatch.setattr(loop_lib.jax, "device_get", device_get)
    run = dataclasses.replace(run_settings(tmp_path), watchdog=WatchdogSettings(factor=5.0, warmup_steps=1))
    batches = iter(lambda: {}, None)
    stage = StageSettings(number=1, steps=12, batch_size=2)
    loop_lib.train_loop(run, stage, FakeCheckpointer([], 100), fake_step([]), State(0), None, None, batches, {})
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("watchdog:")]
    assert len(warnings) == 1 and "process 0: step 8 took" in warnings[0], warnings


HANG = """
import time
from jasper_jax.train.watchdog import HangGuard
guard = HangGuard({timeout}, process=0)
for _ in range({beats}):
    guard.beat()
    time.sleep(0.2)
time.sleep({stall})
print("finished")
"""


def _run(code, timeout=60):
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    return result, time.perf_counter() - began


def test_no_step_for_the_timeout_ends_the_process_with_a_stack_dump():
    result, seconds = _run(HANG.format(timeout=1.0, beats=3, stall=30))
    assert result.returncode == EXIT_HANG, result.stderr
    assert "no progress for 1 s" in result.stderr and "watchdog.hang_timeout_s" in result.stderr
    assert "Thread" in result.stderr and "finished" not in result.stdout  # the stacks were dumped
    assert seconds < 15


def test_regular_steps_keep_the_guard_quiet():
    result, _ = _run(HANG.format(timeout=1.0, beats=15, stall=0))
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr


@pytest.mark.slow
def test_killing_one_of_two_processes_ends_the_other_with_a_message(tmp_path):
    """Process 1 is SIGKILLed after step 5 of a run of 100,000 steps: process 0 must end non-zero, well
    within the heartbeat (10 s) + hang (30 s) timeouts, with the one-line message."""
    began = time.perf_counter()
    result = subprocess.run(
        [
            str(ROOT / "launch" / "local.sh"), "2", "4", sys.executable, *ARGS,
            f"--config.workdir={tmp_path / 'run'}", "--config.stages.stage1.steps=100000",
            "--config.debug.signal.step=5", "--config.debug.signal.name=KILL", "--config.debug.signal.process=1",
            "--config.distributed.heartbeat_timeout_s=10", "--config.watchdog.hang_timeout_s=30",
        ],
        env=dict(_env(4), LOCAL_LOG_DIR=str(tmp_path / "logs")),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    assert result.returncode != 0
    assert "process 0 failed" in result.stderr, result.stderr[-3000:]
    assert seconds < 150, seconds  # start-up (about 10 s) + the timeouts, not the 100,000 steps
    output = result.stdout + result.stderr
    assert "process 0 of 2: a computation failed" in output or "no progress for 30 s" in output, output[-3000:]
