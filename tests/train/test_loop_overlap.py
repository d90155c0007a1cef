"""The loop fetches step N's metrics only after step N+1 is dispatched (checkpoint steps: before saving),
and writes the same metrics.jsonl as fetching every step at once; speed goes to timing.jsonl."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jasper_jax.train import flops as flops_lib
from jasper_jax.train import loop as loop_lib
from jasper_jax.train.settings import DataSettings, RunSettings, StageSettings, TrainingError


class FakeCheckpointer:
    def __init__(self, events, every):
        self.events, self.every, self.directory = events, every, Path("checkpoints")

    def latest_step(self):
        return None

    def should_save(self, step):
        return step % self.every == 0

    def save(self, step, *args):
        self.events.append(("save", step))

    def wait(self):
        pass

    def close(self):
        pass


class Tagged(dict):
    """Metrics that remember their step (so the fake device_get can log which step was fetched)."""


def fake_step(events, bad_steps=()):
    streak = [0]

    def step_fn(state, frozen, rest, batch):
        step = int(state.step) + 1
        events.append(("dispatch", step))
        bad = step in bad_steps
        streak[0] = streak[0] + 1 if bad else 0
        metrics = Tagged(
            loss=np.float32(1.0 / step),
            lr=np.float32(1e-3),
            finite=np.bool_(not bad),
            tokens=np.int32(10 * step),
            token_squares=np.float32(100 * step),
            nonfinite_consecutive=np.int32(streak[0]),
        )
        metrics.step = step
        return type(state)(step), metrics

    return step_fn


class State:
    def __init__(self, step):
        self.step = step


def run_settings(tmp_path, log_every=1, limit=10):
    return RunSettings(
        workdir=tmp_path, seed=0, mesh={}, sharding_rules=(), activation_sharding=False, distributed=None,
        model=None, data=DataSettings(), optimizer=None, objective=None, checkpoint=None, log_every=log_every,
        max_consecutive_nonfinite=limit, progress=False, debug_nonfinite_steps=(), stages={},
    )  # fmt: skip


def run_loop(tmp_path, monkeypatch, *, steps=9, every=4, log_every=1, bad_steps=(), limit=10, throughput=None):
    events = []
    real_get = jax.device_get

    def device_get(tree):
        if isinstance(tree, Tagged):
            events.append(("fetch", tree.step))
        return real_get(dict(tree))

    monkeypatch.setattr(loop_lib.jax, "device_get", device_get)
    batches = iter(lambda: {}, None)  # endless empty batches
    stage = StageSettings(number=1, steps=steps, batch_size=2)
    loop_lib.train_loop(
        run_settings(tmp_path, log_every, limit),
        stage,
        FakeCheckpointer(events, every),
        fake_step(events, bad_steps),
        State(0),
        None,
        None,
        batches,
        {},
        throughput,
    )
    return events


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_are_fetched_one_step_late_and_before_each_checkpoint(tmp_path, monkeypatch):
    events = run_loop(tmp_path, monkeypatch)
    assert events == [
        ("dispatch", 1),
        ("dispatch", 2), ("fetch", 1),
        ("dispatch", 3), ("fetch", 2),
        ("dispatch", 4), ("fetch", 3), ("fetch", 4), ("save", 4),
        ("dispatch", 5),
        ("dispatch", 6), ("fetch", 5),
        ("dispatch", 7), ("fetch", 6),
        ("dispatch", 8), ("fetch", 7), ("fetch", 8), ("save", 8),
        ("dispatch", 9), ("fetch", 9), ("save", 9),
    ]  # fmt: skip
    records = lines(tmp_path / "stage1" / "metrics.jsonl")
    # what fetching every step at once would write: every step, in order, with its own values
    assert [r["step"] for r in records] == list(range(1, 10))
    assert [r["tokens"] for r in records] == [10 * s for s in range(1, 10)]
    assert all("tokens_per_second" not in r and "token_squares" not in r for r in records)
    timing = lines(tmp_path / "stage1" / "timing.jsonl")
    assert [t["step"] for t in timing] == list(range(1, 10))
    assert all(t["tokens_per_second"] > 0 for t in timing)


def test_log_every_and_flops_and_mfu(tmp_path, monkeypatch):
    model = flops_lib.StepFlops(per_token=3.0, per_pair=2.0, per_row=5.0)
    throughput = loop_lib.Throughput(model, rows=2, peak_tflops=1e-9, devices=1)
    run_loop(tmp_path, monkeypatch, steps=6, every=100, log_every=3, throughput=throughput)
    records = lines(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in records] == [3, 6]
    assert [r["model_flops"] for r in records] == [model.total(10 * s, 100 * s, 2) for s in (3, 6)]
    timing = lines(tmp_path / "stage1" / "timing.jsonl")
    assert all(t["tflops_per_second"] > 0 and t["mfu"] > 0 for t in timing)
    ratio = [t["mfu"] * 1e-9 / t["tflops_per_second"] for t in timing]
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-9)


def test_a_run_stopped_by_nonfinite_steps_saves_nothing_after_the_last_good_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(TrainingError, match="stopped at step 8: 2 non-finite steps"):
        run_loop(tmp_path, monkeypatch, steps=12, every=4, bad_steps=(7, 8), limit=2)
    records = lines(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))


def test_unknown_device_reports_no_mfu(capsys):
    peak, source = flops_lib.resolve_peak_tflops(0.0, "cpu")
    loop_lib._told_no_mfu = False
    throughput = loop_lib.Throughput(flops_lib.StepFlops(1.0, 1.0, 1.0), 2, peak, 1, source)
    loop_lib.Throughput(flops_lib.StepFlops(1.0, 1.0, 1.0), 2, peak, 1, source)
    assert capsys.readouterr().out.count("MFU is not reported: unknown device kind 'cpu'") == 1
    throughput.add({"tokens": 5}, 10.0)
    assert set(throughput.timing()) == {"tokens_per_second", "tflops_per_second"}


def test_worker_processes_reach_the_pipeline(tmp_path, monkeypatch):
    from jasper_jax.data import pipeline
    from jasper_jax.train import stage_build

    seen = {}
    monkeypatch.setattr(pipeline, "make_train_iterator", lambda *args, **kwargs: seen.update(kwargs))
    run = dataclasses.replace(run_settings(tmp_path), data=DataSettings(worker_processes=3))
    stage_build.text_iterator(run, stage_build.DataPaths(tmp_path, tmp_path), 8, None, None)
    assert seen["worker_processes"] == 3


@pytest.mark.slow
def test_tiny_run_with_worker_processes_writes_the_same_metrics(tmp_path):
    from jasper_jax.train.config_base import load_config

    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
    for workers in (0, 2):
        config = load_config(
            tiny,
            [f"workdir={tmp_path / str(workers)}", "progress=false", "stages.stage1.steps=6", "checkpoint.every=3"],
        )
        config.data.worker_processes = workers
        loop_lib.train(config, [1])
    expected, got = (lines(tmp_path / w / "stage1" / "metrics.jsonl") for w in ("0", "2"))
    assert [r["step"] for r in got] == list(range(1, 7)) and got == expected
