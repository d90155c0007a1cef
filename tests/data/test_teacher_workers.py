"""Many workers, one store: worker I of N encodes shards s = I mod N; merge writes the manifest once all exist.

The reference is one worker's store: every multi-worker path must give it byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jasper_jax.cli import main
from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store, merge_store, worker_from_environment
from tests.data.data_helpers import fake_factory, finished_shards, sample_texts, tree_hash

REPO = Path(__file__).resolve().parents[2]
DIMS = {"a": 8, "b": 4}
SPECS = [TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b", "p: ")]
TEXTS = sample_texts(36)

WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tests.data.data_helpers import fake_factory, sample_texts
    from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store
    out, worker, workers, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    base = fake_factory({"a": 8, "b": 4})
    def slow(spec):
        encoder = base(spec)
        def encode(texts):
            time.sleep(delay)
            return encoder(texts)
        return encode
    encode_store(sample_texts(36), out, [TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b", "p: ")],
                 shard_rows=4, encoder_factory=slow, progress=False, worker=worker, workers=workers)
    """
)


@pytest.fixture
def one_worker_store(tmp_path):
    out = tmp_path / "one"
    encode_store(TEXTS, out, SPECS, shard_rows=4, encoder_factory=fake_factory(DIMS), progress=False)
    return out


def start_worker(tmp_path, out, worker, workers, delay=0.0):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(script), str(out), str(worker), str(workers), str(delay)], env=env)


def test_two_worker_processes_give_the_one_worker_store(tmp_path, one_worker_store):
    out = tmp_path / "two"
    processes = [start_worker(tmp_path, out, i, 2) for i in range(2)]  # started together: a race for the store
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    assert json.loads((out / "manifest.json").read_text())["complete"] is True  # the last one merged
    assert tree_hash(out) == tree_hash(one_worker_store)
    assert main(["teachers", "merge", str(out)]) == 0  # merging again changes nothing
    assert tree_hash(out) == tree_hash(one_worker_store)


def test_merge_with_a_missing_shard_names_it_then_merges(tmp_path, one_worker_store, capsys):
    out = tmp_path / "split"
    manifest = encode_store(
        TEXTS, out, SPECS, shard_rows=4, encoder_factory=fake_factory(DIMS), progress=False, worker=0, workers=3
    )
    assert manifest["complete"] is False
    before = tree_hash(out)
    assert main(["teachers", "merge", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("jasper-jax teachers: ") and len(error.splitlines()) == 1
    assert "12 shard(s) not finished: a/00001.bin, a/00002.bin, a/00004.bin" in error, error
    assert "a/00000.bin" not in error and "a/00003.bin" not in error
    assert tree_hash(out) == before, "a refused merge wrote something"
    for worker in (1, 2):
        encode_store(
            TEXTS,
            out,
            SPECS,
            shard_rows=4,
            encoder_factory=fake_factory(DIMS),
            progress=False,
            worker=worker,
            workers=3,
            merge=False,
        )
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    assert main(["teachers", "merge", str(out)]) == 0
    assert tree_hash(out) == tree_hash(one_worker_store)


def test_kill_9_one_worker_mid_shard_then_rerun_is_identical(tmp_path, one_worker_store):
    out = tmp_path / "killed"
    first = start_worker(tmp_path, out, 0, 2)
    assert first.wait(timeout=120) == 0
    victim = start_worker(tmp_path, out, 1, 2, delay=0.3)
    deadline = time.time() + 60
    while time.time() < deadline and finished_shards(out) < 12 and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    assert 12 <= finished_shards(out) < 18
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    rerun = start_worker(tmp_path, out, 1, 2)
    assert rerun.wait(timeout=120) == 0
    assert tree_hash(out) == tree_hash(one_worker_store)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(specs=[TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b", "other: ")]), "b's prompt"),
        (dict(dtype="float32"), "a's dtype"),
        (dict(shard_rows=5), "--shard-rows 4"),
        (dict(specs=[TeacherSpec("a", "/fake/a", dense=8), SPECS[1]]), "a's options"),
        (dict(specs=[TeacherSpec("a", "/fake/other"), SPECS[1]]), "a's path"),
    ],
)
def test_a_worker_with_other_settings_is_refused_naming_the_field(tmp_path, change, field):
    out = tmp_path / "store"
    encode_store(
        TEXTS, out, SPECS, shard_rows=4, encoder_factory=fake_factory(DIMS), progress=False, worker=0, workers=2
    )
    before = tree_hash(out)
    arguments = dict(specs=SPECS, dtype="float16", shard_rows=4) | change
    with pytest.raises(ValueError, match=field):
        encode_store(
            TEXTS,
            out,
            arguments["specs"],
            dtype=arguments["dtype"],
            shard_rows=arguments["shard_rows"],
            encoder_factory=fake_factory(DIMS),
            progress=False,
            worker=1,
            workers=2,
        )
    assert tree_hash(out) == before


def test_worker_index_out_of_range_writes_nothing(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one\ntwo\n")
    out = tmp_path / "store"
    argv = ["teachers", "encode", "--corpus", str(corpus), "--teacher", "minilm", "--out", str(out)]
    assert main(argv + ["--worker", "2", "--workers", "2"]) != 0
    assert "worker index 2 out of range for 2 worker(s)" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="out of range"):
        encode_store(["x"], out, SPECS, encoder_factory=fake_factory(DIMS), worker=-1, workers=2)
    assert not out.exists()


def test_worker_from_the_launchers_environment():
    assert worker_from_environment({}) == (None, None)
    assert worker_from_environment({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == (3, 8)
    array = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert worker_from_environment({**array, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (1, 4)
    assert worker_from_environment({"JOB_COMPLETION_INDEX": "2"}) == (2, None)
    assert worker_from_environment({"JOB_COMPLETION_INDEX": "2", "JASPER_JAX_WORKERS": "5"}) == (2, 5)
    assert worker_from_environment({"JAX_PROCESS_ID": "1", "JAX_NUM_PROCESSES": "2"}) == (1, 2)


def test_merge_of_a_finished_store_refuses_a_changed_shard(tmp_path, one_worker_store):
    shard = one_worker_store / "a" / "00002.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="a/00002.bin: sha256 differs"):
        merge_store(one_worker_store)
