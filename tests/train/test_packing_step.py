"""A train step on a packed batch (`data.packing`) equals the step on the padded batch of the same texts.

Reference: today's padded step. Real JasperStudent (tiny BERT and causal Qwen2), the paper's stage objective
(heads mode, three heads), vector dropout on, 8 fake devices; loss, metrics and updated parameters within
1e-5 (float32). The learning rate is 1e-3: Adam scales each update to about lr whatever the gradient, so
parameters whose true gradient is 0 (the key biases: softmax is shift-invariant) move by rounding noise times
lr; at 1e-2 that noise alone reaches 1e-5. The end-to-end test runs `train` on configs/tiny.py with packing
on and off."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jasper_jax.data.packing import pack_batch
from jasper_jax.data.tokenization import pad_batch
from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import BertConfig, JasperStudent, Qwen2Config, StudentConfig
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import OptimizerSettings

MAX_LENGTH, TEXTS, HEADS = 16, 16, {"fc1": 12, "fc2": 8, "fc3": 4}
ENCODERS = {
    "bert": BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
    ),
    "qwen2-causal": Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        causal=True,
    ),
}


def batches(seed):
    """The same texts (one past MAX_LENGTH) and teacher rows, padded and packed (rows divisible by 8)."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 64, int(n)).tolist() for n in rng.integers(1, 22, TEXTS)]
    common = {
        "teacher": rng.normal(size=(TEXTS, HEADS["fc1"])).astype(np.float32),
        "row_mask": np.arange(TEXTS) < TEXTS - 2,  # two masked rows, as in a final partial batch
    }
    return {**pad_batch(ids, MAX_LENGTH, 0), **common}, {**pack_batch(ids, MAX_LENGTH, 0, row_multiple=8), **common}


def run_steps(family, packed, steps=2):
    config = StudentConfig(encoder=ENCODERS[family], heads=HEADS, vector_dropout=0.2)
    with nnx.use_eager_sharding(False):
        model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, (".*",))
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(warmup_fraction=0.0), 1e-3, 10)
    mesh = make_mesh({"data": 4, "fsdp": 2}, jax.devices())
    keys = step_lib.PACKED_BATCH_KEYS if packed else step_lib.BATCH_KEYS
    state = step_lib.init_train_state(trainable, tx)
    shardings = step_lib.step_shardings(
        mesh, sharding_lib.rules_from_config(None), state, frozen, rest, batch_keys=keys
    )
    fn = step_lib.train_step_fn(
        graphdef,
        tx,
        step_lib.text_objective(ObjectiveConfig()),
        schedule,
        deterministic=False,
        activation_sharding=sharding_lib.activation_sharding(mesh),
    )
    step = step_lib.jit_train_step(fn, shardings, mesh)
    state = step_lib.place(state, shardings.state)
    frozen = step_lib.place(frozen, shardings.frozen)
    rest = step_lib.place(rest, shardings.rest)
    history = []
    for i in range(steps):
        batch = batches(seed=i)[1 if packed else 0]
        state, metrics = step(state, frozen, rest, step_lib.place(batch, shardings.batch))
        history.append(jax.device_get(metrics))
    return state, history


@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_packed_step_equals_padded_step(family):
    padded_state, padded_metrics = run_steps(family, packed=False)
    packed_state, packed_metrics = run_steps(family, packed=True)
    for padded, packed in zip(padded_metrics, packed_metrics, strict=True):
        assert set(padded) == set(packed) and bool(packed["finite"])
        assert int(packed["tokens"]) == int(padded["tokens"])
        for key in padded:
            np.testing.assert_allclose(np.asarray(packed[key]), np.asarray(padded[key]), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(packed_state.params), jax.tree.leaves(padded_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # the step really moved the parameters (a zero gradient would also "agree")
    initial = JasperStudent(
        StudentConfig(encoder=ENCODERS[family], heads=HEADS, vector_dropout=0.2), rngs=nnx.Rngs(params=0, dropout=1)
    )
    first = np.asarray(nnx.state(initial, nnx.Param)["encoder"]["layers"][0]["mlp"]["up"]["kernel"][...])
    moved = np.asarray(packed_state.params["encoder"]["layers"][0]["mlp"]["up"]["kernel"][...])
    assert not np.allclose(first, moved)


def metrics_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_train_with_packing_equals_train_without(tmp_path):
    """configs/tiny.py stage 3 (everything trains, three heads, vector dropout), two steps each way."""
    from jasper_jax.train.checkpoint import StageCheckpointer
    from jasper_jax.train.config_base import load_config
    from jasper_jax.train.loop import train

    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
    params = {}
    for packing in (False, True):
        workdir = tmp_path / f"packing_{packing}"
        overrides = [f"workdir={workdir}", "progress=false", "stages.stage3.steps=2", "stages.stage3.init_from=model"]
        overrides += ["checkpoint.async_save=false", f"data.packing={packing}", "log_every=1"]
        train(load_config(tiny, overrides), [3])
        checkpointer = StageCheckpointer(workdir / "stage3" / "checkpoints", every=1, keep=10)
        params[packing] = jax.tree.leaves(checkpointer.host_params(2))
        checkpointer.close()
        params[f"{packing}/metrics"] = metrics_of(workdir / "stage3" / "metrics.jsonl")
    for a, b in zip(params[True], params[False], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    for packed, padded in zip(params["True/metrics"], params["False/metrics"], strict=True):
        np.testing.assert_allclose(packed["loss"], padded["loss"], rtol=1e-5)
        assert packed["tokens"] == padded["tokens"]


def test_compile_check_compiles_the_packed_step():
    """compile-check builds the packed batch (largest row bucket: as many rows as texts) and compiles it."""
    from jasper_jax.train.compile_check import compile_stage_step
    from jasper_jax.train.config_base import load_config
    from jasper_jax.train.settings import settings_from_config
    from jasper_jax.train.stage_build import abstract_stage_batch, abstract_stage_model, build_stage_step

    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
    config = load_config(tiny, ["data.packing=true"])
    compiled, summary = compile_stage_step(config, 3)
    assert compiled is not None and summary["batch"] == 16 and summary["length"] == 32
    run = settings_from_config(config)
    stage = run.stage(3)
    built = abstract_stage_model(run, stage)
    step = build_stage_step(run, stage, built, make_mesh(run.mesh))
    batch = abstract_stage_batch(run, stage, built, step, 16, 32)
    assert sorted(batch) == sorted(step_lib.PACKED_BATCH_KEYS)
    assert batch["segment_ids"].shape == batch["input_ids"].shape == (16, 32) and batch["text_row"].shape == (16,)
