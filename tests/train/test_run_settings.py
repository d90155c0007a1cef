"""A rerun refuses to resume or skip a stage whose checkpoints ran with other trajectory settings."""

import hashlib
from pathlib import Path

import pytest

from jasper_jax.errors import EXIT_BAD_INPUT
from jasper_jax.train import run_settings
from jasper_jax.train.config_base import load_config
from jasper_jax.train.loop import train
from jasper_jax.train.settings import TrainingError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.py")


def config_dict(**stage3):
    return {
        "workdir": "/runs/a",
        "seed": 1,
        "progress": True,
        "model": {"source": "minilm", "encoder": {"layers": 6}},
        "optimizer": {"clip_norm": 1.0},
        "objective": {"cosine_weight": 10.0, "relative_similarity_weight": 20.0},
        "data": {"store": "/runs/a/teachers", "max_length": 64, "worker_threads": 2},
        "stages": {
            "stage1": {"lr": 2e-4, "init_from": "model", "heads": {"fc1": 8}, "trainable": ["heads/fc1/.*"]},
            "stage2": {"lr": 5e-5, "init_from": "previous", "heads": {"fc1": 8}, "objective": {}},
            "stage3": {"lr": 2e-5, "init_from": "previous", "heads": {"fc1": 8}, "objective": {}, **stage3},
        },
    }


def test_where_and_how_it_shows_are_not_changes():
    saved, now = config_dict(), config_dict()
    now.update(workdir="/elsewhere", progress=False)
    now["data"].update(store="/elsewhere/teachers", worker_threads=8)
    now["model"].update(scan_layers="true", remat="full")  # how the step is computed, not what
    assert run_settings.differences(saved, now, 3) == []


def test_a_changed_setting_is_named_with_both_values():
    now = config_dict(lr=4e-5)
    assert run_settings.differences(config_dict(), now, 3) == ["stages.stage3.lr: 2e-05 there, 4e-05 now"]
    now["stages"]["stage3"]["heads"] = {"fc1": 8, "fc4": 2}  # a dict-valued field is compared whole
    assert "stages.stage3.heads: {'fc1': 8} there, {'fc1': 8, 'fc4': 2} now" in run_settings.differences(
        config_dict(), now, 3
    )


def test_a_stage_objective_override_counts_as_the_objective_it_trains_with():
    now = config_dict(objective={"relative_similarity_weight": 200.0})
    assert run_settings.differences(config_dict(), now, 3) == [
        "stages.stage3.objective.relative_similarity_weight: 20.0 there, 200.0 now"
    ]
    global_change = config_dict()
    global_change["objective"]["cosine_weight"] = 2.0
    changed = run_settings.differences(config_dict(), global_change, 1)
    assert changed == ["stages.stage1.objective.cosine_weight: 10.0 there, 2.0 now"]


def test_earlier_stages_count_for_a_later_one_but_not_the_other_way():
    now = config_dict()
    now["stages"]["stage1"]["lr"] = 1e-3
    assert run_settings.differences(config_dict(), now, 3) == ["stages.stage1.lr: 0.0002 there, 0.001 now"]
    assert run_settings.differences(config_dict(lr=1.0), config_dict(), 2) == []
    # a stage that starts from the model does not depend on the stages before it
    fresh = config_dict(init_from="model")
    changed = config_dict(init_from="model")
    changed["stages"]["stage2"]["lr"] = 1.0
    assert run_settings.differences(fresh, changed, 3) == []


def test_fields_one_version_lacks_are_not_compared():
    older = config_dict()
    del older["stages"]["stage3"]["objective"]
    del older["optimizer"]["clip_norm"]
    newer = config_dict(head_fit_batches=64)
    assert run_settings.differences(older, newer, 3) == []


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_rerun_with_other_settings_is_refused_and_leaves_the_run_as_it_was(tmp_path, capsys):
    def tiny(*overrides):
        return load_config(
            TINY,
            [
                f"workdir={tmp_path}",
                "progress=false",
                "stages.stage1.steps=4",
                "stages.stage2.steps=2",
                "checkpoint.every=2",
                *overrides,
            ],
        )

    train(tiny(), [1])
    before = _digest(tmp_path / "stage1")
    capsys.readouterr()
    with pytest.raises(TrainingError) as refused:
        train(tiny("stages.stage1.lr=0.5"), [1])
    assert refused.value.exit_code == EXIT_BAD_INPUT
    error = str(refused.value)
    assert "stage 1:" in error and "stages.stage1.lr:" in error and "0.5 now" in error, error
    assert str(tmp_path / "stage1") in error
    # stage 2 alone would start from the changed stage 1: refused too, before anything is written
    with pytest.raises(TrainingError, match="stages.stage1.lr:") as refused:
        train(tiny("stages.stage1.lr=0.5"), [2])
    assert refused.value.exit_code == EXIT_BAD_INPUT
    stage2 = tmp_path / "stage2" / "checkpoints"
    assert not stage2.exists() or not any(stage2.iterdir())
    assert _digest(tmp_path / "stage1") == before
    # what only changes how the run shows or keeps its work: skipped as complete, and stage 2 starts from it
    train(tiny("log_every=3", "checkpoint.keep=5"), [1, 2])
    assert _digest(tmp_path / "stage1") == before
