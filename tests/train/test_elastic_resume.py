"""Elastic resume: the data position is one global record, so a stage resumes on another process count.

The slow tests stop a tiny training (three non-finite steps in a row end it at step 13; checkpoint 10 is
the last) on 2 processes x 2 fake devices and resume it on 1 process x 4, and the other way round; the
metrics must equal an uninterrupted run's within the mesh-change resume test's tolerance (rtol 2e-5,
atol 1e-6: the same 4-device mesh, reductions grouped per process).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jasper_jax.train import checkpoint as checkpoint_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.checkpoint import StageCheckpointer
from tests.train.test_checkpoint import CountingIterator, setup

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("loss", "grad_norm", "lr", "cosine/fc1", "similarity/fc1", "relative_similarity/fc1")


def _saved(tmp_path, position):
    step, state, frozen, rest, shardings = setup({"data": 4}, jax.devices()[:4])
    state, frozen = step_lib.place(state, shardings.state), step_lib.place(frozen, shardings.frozen)
    iterator = CountingIterator()
    iterator.position = position
    checkpointer = StageCheckpointer(tmp_path / "ckpt", every=1, keep=2)
    checkpointer.save(3, state, frozen, iterator, {"stage": 1})
    checkpointer.close()
    return state, frozen, shardings


def _restore(tmp_path, saved):
    state, frozen, shardings = saved
    reader = StageCheckpointer(tmp_path / "ckpt", every=1, keep=2)
    iterator = CountingIterator()
    reader.restore(3, state, shardings.state, frozen, shardings.frozen, iterator)
    reader.close()
    return iterator.position


def test_the_data_position_is_one_record_whatever_the_process_count(tmp_path):
    saved = _saved(tmp_path, 7)
    folder = tmp_path / "ckpt" / "3" / "data_iter"
    assert not list(folder.glob("process_*")) and (folder / "metadata").is_file()  # not one file per process
    record = json.loads((folder / "metadata").read_text())
    assert record == {"format": checkpoint_lib.DATA_POSITION_FORMAT, "process_count": 1, "state": {"position": 7}}
    assert _restore(tmp_path, saved) == 7


def test_a_checkpoint_with_per_process_files_resumes_on_another_process_count(tmp_path):
    """Checkpoints from before the record (Grain's handler, `process_{i}-of-{n}.json`, identical on every
    process) written by 2 processes resume on 1."""
    saved = _saved(tmp_path, 0)
    folder = tmp_path / "ckpt" / "3" / "data_iter"
    (folder / "metadata").unlink()
    for index in range(2):
        (folder / f"process_{index}-of-2.json").write_text(json.dumps({"position": 5}, indent=4))
    assert _restore(tmp_path, saved) == 5


def test_a_record_of_another_format_is_refused(tmp_path):
    saved = _saved(tmp_path, 0)
    (tmp_path / "ckpt" / "3" / "data_iter" / "metadata").write_text(json.dumps({"format": "other/9", "state": {}}))
    with pytest.raises(ValueError, match="format 'other/9'"):
        _restore(tmp_path, saved)


def _args(workdir, *extra):
    return [
        "-m",
        "jasper_jax",
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        f"--config.workdir={workdir}",
        "--config.progress=false",
        "--stages",
        "1",
        "--config.stages.stage1.steps=16",
        "--config.checkpoint.every=5",
        *extra,
    ]


STOP = ("--config.max_consecutive_nonfinite=3", "--config.debug.nonfinite_steps=(11, 12, 13)")


def _env(devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _train(processes, workdir, *extra):
    """Train on `processes` processes x (4 / processes) fake devices: the same 4-device mesh."""
    if processes == 1:
        command, env = [sys.executable, *_args(workdir, *extra)], _env(4)
    else:
        command = [str(ROOT / "launch" / "local.sh"), str(processes), str(4 // processes), sys.executable]
        command += _args(workdir, *extra)
        env = dict(_env(4 // processes), LOCAL_LOG_DIR=str(Path(workdir).parent / f"logs-{Path(workdir).name}"))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)


def _metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "stage1" / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory):
    """The uninterrupted run (1 process x 4 devices)."""
    workdir = tmp_path_factory.mktemp("elastic") / "reference"
    reference = _train(1, workdir)
    assert reference.returncode == 0, reference.stderr[-2000:]
    return _metrics(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_stopped_on_one_process_count_resumed_on_another(tmp_path, reference_metrics, before, after):
    stopped = _train(before, tmp_path / "moved", *STOP)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "last good checkpoint is 10" in output, output[-3000:]
    record = json.loads((tmp_path / "moved" / "stage1" / "checkpoints" / "10" / "data_iter" / "metadata").read_text())
    assert record["process_count"] == before and record["state"]["global_batches"] == 10
    resumed = _train(after, tmp_path / "moved")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "resuming from checkpoint 10" in output, output[-3000:]
    expected, got = reference_metrics, _metrics(tmp_path / "moved")
    assert [r["step"] for r in got] == list(range(1, 17))
    for a, b in zip(expected, got):
        for key in KEYS:
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
