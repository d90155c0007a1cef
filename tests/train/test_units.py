"""Mesh sizes, logical-axis rules, distributed detection, config overrides and the CLI's argument parsing."""

import argparse
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jasper_jax.train import distributed
from jasper_jax.train.cli import add_arguments, parse_stages
from jasper_jax.train.config_base import apply_override, load_config
from jasper_jax.train.mesh import make_mesh, mesh_shape
from jasper_jax.train.settings import settings_from_config
from jasper_jax.train.sharding import DEFAULT_RULES, logical_to_spec, rules_from_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
    assert mesh_shape({"data": -1, "fsdp": 2}, 8) == (4, 2, 1)
    assert mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="does not divide"):
        mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_shape({"model": 2}, 8)
    with pytest.raises(ValueError, match="uses 4 devices"):
        mesh_shape({"data": 4}, 8)
    mesh = make_mesh({"data": 2, "tensor": -1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_logical_rules_replicate_unknown_and_indivisible_dimensions():
    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = rules_from_config(DEFAULT_RULES)
    assert logical_to_spec(("embed", "mlp"), (64, 128), rules, mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("embed", "mlp"), (63, 128), rules, mesh) == P(None, "tensor")  # 63 % 2
    assert logical_to_spec(("embed", "mlp"), (64, 6), rules, mesh) == P("fsdp")  # 6 % 4
    assert logical_to_spec(("something_new", "embed"), (8, 64), rules, mesh) == P(None, "fsdp")
    assert logical_to_spec(("mlp", "heads"), (8, 8), rules, mesh) == P("tensor")  # tensor used once
    assert logical_to_spec(None, (8,), rules, mesh) == P()
    both = rules_from_config([("embed", ("data", "fsdp"))])
    assert logical_to_spec(("embed",), (8,), both, make_mesh({"data": 4, "fsdp": 2})) == P(("data", "fsdp"))


def test_distributed_detection_order():
    detect = distributed.detect
    assert detect(environ={}).source == "single"
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert detect(environ=env) == distributed.DistributedSetup("env", "h:1", 4, 2)
    assert detect("c:2", 2, 1, environ=env).source == "explicit"
    assert detect(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}).source == "slurm"
    assert detect(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).source == "single"
    assert detect(environ={"TPU_WORKER_HOSTNAMES": "a,b"}).source == "tpu"
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        detect(environ={"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match="needs num_processes"):
        detect("c:2", environ={})


def test_config_overrides_are_typed():
    config = load_config(
        str(CONFIGS / "jasper_paper.py"),
        [
            "stages.stage3.lr=1e-5",
            "mesh.fsdp=4",
            "mesh.dcn.data=2",  # the paper config has the across-host block (data across hosts)
            "model.remat=false",
            "activation_sharding=false",
            "stages.stage1.trainable=('a/.*', 'b/.*')",
            "data.shuffle_seed=7",
        ],
    )
    assert config.stages.stage3.lr == 1e-5 and config.mesh.fsdp == 4 and config.activation_sharding is False
    assert config.mesh.dcn.data == 2 and config.mesh.dcn.fsdp == 1
    assert config.stages.stage1.trainable == ("a/.*", "b/.*") and config.data.shuffle_seed == 7
    assert config.stages.stage4.vision.image_tokens == 300
    with pytest.raises(KeyError, match="no field 'lrr'"):
        apply_override(config, "stages.stage3.lrr=1")
    # a stage's objective holds only what it overrides; any objective field can still be set there, typed as
    # the global one, and reaches that stage's settings only
    assert "score_kl_weight" not in config.stages.stage3.objective
    apply_override(config, "stages.stage3.objective.score_kl_weight=4")
    assert config.stages.stage3.objective.score_kl_weight == 4.0
    assert isinstance(config.stages.stage3.objective.score_kl_weight, float)
    run = settings_from_config(config)
    assert run.stages[3].objective.score_kl_weight == 4.0 and run.stages[2].objective.score_kl_weight == 1.0
    with pytest.raises(KeyError, match="no field 'score_kl_weigth'"):
        apply_override(config, "stages.stage3.objective.score_kl_weigth=4")
    with pytest.raises(ValueError, match="true/false"):
        apply_override(config, "activation_sharding=maybe")
    # model.remat takes a policy name; the booleans of configs from before the policies still read
    assert settings_from_config(config).model.remat == "none"
    config.model.remat = True  # as a config file from before the policies sets it
    assert settings_from_config(config).model.remat == "full"
    apply_override(config, "model.scan_layers=false")
    assert settings_from_config(config).model.scan_layers_on("gpu") is False


def test_cli_collects_config_overrides_anywhere():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--config", "configs/tiny.py", "--config.workdir=/tmp/x", "--stages", "1,3", "--config.seed", "5"]
    )
    assert args.config == "configs/tiny.py" and parse_stages(args.stages) == [1, 3]
    assert args.config_overrides == ["config.workdir=/tmp/x", "config.seed=5"]


def test_every_config_loads():
    for name in ("tiny", "minilm_demo", "jasper_paper"):
        config = load_config(str(CONFIGS / f"{name}.py"))
        assert config.stages.stage1.heads.fc1 > 0 and config.workdir


def test_unknown_stage_is_refused_before_anything_runs(tmp_path):
    from jasper_jax.train.loop import train
    from jasper_jax.train.settings import TrainingError

    config = load_config(str(CONFIGS / "jasper_paper.py"), [f"workdir={tmp_path}"])
    with pytest.raises(TrainingError, match=r"no stage 7 \(it has \[1, 2, 3, 4\]\)"):
        train(config, [7])
    assert not any(tmp_path.iterdir())


def test_broken_teacher_store_is_refused_before_step_one(tmp_path, capsys):
    import json

    from jasper_jax.errors import EXIT_BAD_INPUT
    from jasper_jax.train.loop import train
    from jasper_jax.train.settings import TrainingError
    from jasper_jax.train.synthetic import generate_tiny_data

    generate_tiny_data(tmp_path / "data", rows=40)
    manifest_path = tmp_path / "data" / "store" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["rows"] = 41  # texts and vectors no longer line up
    manifest_path.write_text(json.dumps(manifest))
    config = load_config(str(CONFIGS / "tiny.py"), [f"workdir={tmp_path}", "progress=false"])
    with pytest.raises(TrainingError) as refused:
        train(config, [1])
    assert refused.value.exit_code == EXIT_BAD_INPUT
    error = str(refused.value)
    assert "teacher store" in error and "nothing was trained" in error, error
    assert not (tmp_path / "stage1").exists()
