"""Preemption: SIGTERM to a running tiny training -> a checkpoint at the agreed step, exit code 75 -> the
rerun's metrics.jsonl equals an uninterrupted run's; with 1 process and with 2 processes x 4 devices
(launch/local.sh, gloo), where only process 1 gets the signal and JAX's preemption sync point makes both
stop at the same step. Tolerance as tests/train/test_multiprocess.py (rtol 1e-5, atol 1e-6).

The signal comes from the training itself (`config.debug.signal`: the process signals itself after a
given step), so the step it arrives at is deterministic.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from jasper_jax.errors import EXIT_REQUEUE
from tests.train.test_multiprocess import ARGS, ROOT, _env, _params

STEPS = 14
TRAIN = [*ARGS, f"--config.stages.stage1.steps={STEPS}", "--config.checkpoint.every=10"]


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "stage1" / "metrics.jsonl").read_text().splitlines()]


def _single(workdir, *extra):
    return subprocess.run(
        [sys.executable, *TRAIN, f"--config.workdir={workdir}", *extra],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _two_processes(workdir, logs, *extra):
    return subprocess.run(
        [str(ROOT / "launch" / "local.sh"), "2", "4", sys.executable, *TRAIN, f"--config.workdir={workdir}", *extra],
        env=dict(_env(4), LOCAL_LOG_DIR=str(logs)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The workdir of the uninterrupted 1-process run (its metrics and final params are the reference)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _single(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _assert_same_metrics(got, expected):
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")


def _checkpoints(workdir):
    return sorted(int(p.name) for p in (workdir / "stage1" / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigterm_in_one_process_saves_at_that_step_and_the_rerun_continues_exactly(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    stopped = _single(workdir, "--config.debug.signal.step=7")
    assert stopped.returncode == EXIT_REQUEUE, stopped.stderr[-3000:]
    assert "preempted (SIGTERM) at step 7: checkpoint 7 saved" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert _checkpoints(workdir) == [7]
    assert [r["step"] for r in _metrics(workdir)] == list(range(1, 8))
    resumed = _single(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint 7" in resumed.stdout
    _assert_same_metrics(_metrics(workdir), _metrics(uninterrupted))


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path, uninterrupted):
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    stopped = _two_processes(workdir, logs, "--config.debug.signal.step=7", "--config.debug.signal.process=1")
    assert stopped.returncode == EXIT_REQUEUE, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    logs_text = [(logs / f"process_{i}.log").read_text() for i in range(2)]
    steps = [re.search(r"preempted \(SIGTERM\) at step (\d+)", text) for text in logs_text]
    assert all(steps), logs_text[0][-2000:]
    at = {int(match.group(1)) for match in steps}
    assert len(at) == 1, at  # both processes stopped at the same step
    (step,) = at
    assert 7 < step < STEPS and step in _checkpoints(workdir)
    assert [r["step"] for r in _metrics(workdir)] == list(range(1, step + 1))
    resumed = _two_processes(workdir, tmp_path / "logs2")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _assert_same_metrics(_metrics(workdir), _metrics(uninterrupted))
    # 2 processes x 4 devices (default mesh) end at the 1-process run's parameters (as test_multiprocess)
    expected = _params(uninterrupted / "stage1" / "checkpoints", STEPS)
    got = _params(workdir / "stage1" / "checkpoints", STEPS)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_sigterm_during_a_step_saves_that_step_and_asks_for_a_requeue(tmp_path):
    """In process: the loop (fake steps) gets SIGTERM while step 3 runs; it saves checkpoint 3, raises
    TrainingError with EXIT_REQUEUE, and gives SIGTERM its handler back."""
    import os
    import signal

    from jasper_jax.train import loop as loop_lib
    from jasper_jax.train.settings import StageSettings, TrainingError
    from tests.train.test_loop_overlap import FakeCheckpointer, State, fake_step, run_settings

    events = []
    inner = fake_step(events)

    def step_fn(state, *args):
        if int(state.step) + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(state, *args)

    handler = signal.getsignal(signal.SIGTERM)
    stage = StageSettings(number=1, steps=9, batch_size=2)
    with pytest.raises(TrainingError) as error:
        loop_lib.train_loop(
            run_settings(tmp_path), stage, FakeCheckpointer(events, 100), step_fn, State(0), None, None,
            iter(lambda: {}, None), {},
        )  # fmt: skip
    assert error.value.exit_code == EXIT_REQUEUE and "preempted (SIGTERM) at step 3" in str(error.value)
    assert ("save", 3) in events and ("dispatch", 4) not in events
    assert signal.getsignal(signal.SIGTERM) == handler


def test_grain_worker_processes_outlive_a_sigterm_to_the_process_group(tmp_path):
    """SLURM signals every process of a step: the pipeline's worker processes ignore SIGTERM, so the
    trainer can still read batches while it reaches its checkpoint."""
    import multiprocessing
    import os
    import signal

    from jasper_jax.data.pipeline import make_train_iterator
    from jasper_jax.train.synthetic import generate_tiny_data

    tokenizer, store = generate_tiny_data(tmp_path / "data")
    iterator = make_train_iterator(store, tokenizer, global_batch_size=4, mesh=None, worker_processes=1, prefetch=1)
    first = next(iterator)
    workers = multiprocessing.active_children()
    assert workers
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    for _ in range(5):
        batch = next(iterator)
    assert all(worker.is_alive() for worker in workers)
    assert batch["input_ids"].shape[0] == first["input_ids"].shape[0] == 4
