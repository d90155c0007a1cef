"""Token compression in training: the ratio is sampled per step from `model.token_compression.train_ratio`.

- The pipeline's `compressed_mask` keeps, for each text of n tokens, t(n) = n (n <= threshold) else
  int(threshold + (n - threshold) * r) positions (the released code's formula, recomputed here in Python
  floats), r uniform in [low, high] per batch, drawn again alike after a resume; T is a power-of-two bucket.
- A host-built mask at ratio r gives the student the same vectors as the static ratio-r call (1e-6), and
  GradCache with it the plain step's parameters (1e-5).
- A tiny Qwen3 training with a compressor logs `encoder_tokens` below `tokens`, varying per step, and a
  SIGTERM + resume reproduces the uninterrupted metrics exactly as any other run.
- FLOPs: the compressor's MLP counts per input token, the encoder per compressed token.
"""

import json
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.data.pipeline import CompressionSampling, make_train_iterator
from jasper_jax.models import JasperStudent
from jasper_jax.train import flops as flops_lib
from jasper_jax.train.settings import ModelSettings, TrainingError
from jasper_jax.train.stage_build import student_config_for
from jasper_jax.train.synthetic import generate_tiny_data
from tests.train.test_multiprocess import ROOT, _env

THRESHOLD = 6
ENCODER = dict(
    vocab_size=204,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    intermediate_size=24,
    max_position_embeddings=64,
)


def released_length(n: int, ratio: float) -> int:
    return n if n <= THRESHOLD else int(THRESHOLD + (n - THRESHOLD) * ratio)


def tiny_store(tmp_path):
    """The tiny config's generated store (texts of 3-20 words, longer than THRESHOLD tokens)."""
    tokenizer, store = generate_tiny_data(tmp_path / "data")
    return store, tokenizer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("store"))


def batches(store, count, sampling, state=None, start_row=0):
    iterator = make_train_iterator(
        store[0], store[1], global_batch_size=8, mesh=None, max_length=32, compression=sampling,
        start_row=start_row, worker_threads=1, prefetch=1,
    )  # fmt: skip
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator.get_state()


def test_each_batch_keeps_the_released_lengths_at_its_sampled_ratio(store):
    sampling = CompressionSampling(THRESHOLD, 0.3, 1.0, seed=5)
    got, _ = batches(store, 6, sampling, start_row=3)
    ratios = []
    for index, batch in enumerate(got):
        ratio = sampling.ratio(3, index)
        assert 0.3 <= ratio <= 1.0
        ratios.append(ratio)
        lengths = batch["attention_mask"].sum(1)
        kept = batch["compressed_mask"].sum(1)
        assert kept.tolist() == [released_length(int(n), ratio) for n in lengths]
        width = batch["compressed_mask"].shape[1]
        assert width & (width - 1) == 0 and width >= kept.max() and width <= batch["attention_mask"].shape[1]
        # right-padded: each row's kept positions come first
        assert (np.cumsum(batch["compressed_mask"][:, ::-1], 1)[:, ::-1] == 0).sum() == width * 8 - kept.sum()
    assert len(set(ratios)) == 6  # a new ratio every step
    assert any(released_length(int(n), ratios[0]) < n for n in got[0]["attention_mask"].sum(1))


def test_the_ratios_are_drawn_again_alike_after_a_resume(store):
    sampling = CompressionSampling(THRESHOLD, 0.3, 1.0, seed=5)
    whole, _ = batches(store, 5, sampling)
    _, state = batches(store, 2, sampling)
    rest, _ = batches(store, 3, sampling, state=state)
    for a, b in zip(whole[2:], rest):
        np.testing.assert_array_equal(a["compressed_mask"], b["compressed_mask"])
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def student(ratio=0.5):
    settings = ModelSettings(
        family="qwen3", encoder=ENCODER, token_compression={"threshold": THRESHOLD, "ratio": ratio}
    )
    config = student_config_for(SimpleNamespace(model=settings), {"fc1": 8}, None)
    with nnx.use_eager_sharding(False):
        return JasperStudent(config, rngs=nnx.Rngs(0)), config


def test_a_host_built_mask_gives_the_vectors_of_the_static_ratio():
    model, _ = student()
    lengths = np.array([30, 6, 3, 17, 11])
    ids = jnp.asarray(np.where(np.arange(32)[None] < lengths[:, None], 7 + np.arange(32)[None] % 50, 0), jnp.int32)
    mask = (ids > 0).astype(jnp.int32)
    for ratio in (1.0, 0.5, 0.33):
        static = model(ids, mask, compression_ratio=ratio)["fc1"]
        host_mask = CompressionSampling(THRESHOLD, ratio, ratio).mask(lengths, ratio, 32)
        assert host_mask.shape[1] >= int(host_mask.sum(1).max())  # a bucket, wider than the static T
        sampled = model(ids, mask, compressed_mask=jnp.asarray(host_mask))["fc1"]
        np.testing.assert_allclose(np.asarray(sampled), np.asarray(static), atol=1e-6, err_msg=str(ratio))


def test_train_ratio_is_a_number_or_an_ordered_range_in_0_1():
    assert ModelSettings(token_compression={"train_ratio": (0.3, 1.0)}).train_ratio_range() == (0.3, 1.0)
    assert ModelSettings(token_compression={"train_ratio": 0.5}).train_ratio_range() == (0.5, 0.5)
    assert ModelSettings(token_compression={"ratio": 0.5}).train_ratio_range() is None
    for bad, message in (((0.8, 0.3), "low must be <= high"), ((0.0, 0.5), "must be in"), ((1, 2, 3), "a number or")):
        with pytest.raises(TrainingError, match=message):
            ModelSettings(token_compression={"train_ratio": bad})


def test_flops_count_the_compressor_per_input_token_and_the_encoder_per_kept_token():
    _, config = student()
    model = flops_lib.step_flop_model(config, lambda prefix: True)
    d, inter = ENCODER["hidden_size"], ENCODER["intermediate_size"]
    assert model.per_input_token == 3 * (3 * 2 * d * inter)  # gate, up, down; forward + dW + dx
    plain = flops_lib.step_flop_model(
        student_config_for(SimpleNamespace(model=ModelSettings(family="qwen3", encoder=ENCODER)), {"fc1": 8}, None),
        lambda p: True,
    )
    assert plain.per_input_token == 0 and model.per_token == plain.per_token
    full = model.total(100.0, 1000.0, 4, input_tokens=100.0)
    fewer = model.total(50.0, 300.0, 4, input_tokens=100.0)
    assert model.causal  # Qwen3: n(n+1)/2 score pairs per text of n tokens
    pairs = (1000 + 100) / 2 - (300 + 50) / 2
    assert fewer < full and full - fewer == pytest.approx(model.per_token * 50 + model.per_pair * pairs)


TRAIN = [
    "-m", "jasper_jax", "train", "--config", str(ROOT / "configs" / "tiny.py"), "--config.progress=false",
    "--stages", "1", "--config.stages.stage1.steps=8", "--config.checkpoint.every=100",
    "--config.model.family=qwen3", f"--config.model.encoder={ENCODER}", "--config.model.vector_dropout=0.0",
    f"--config.model.token_compression={dict(threshold=THRESHOLD, ratio=0.5, train_ratio=(0.3, 1.0))}",
    "--config.stages.stage1.trainable=('.*',)",
]  # fmt: skip


def _train(workdir, *extra):
    return subprocess.run(
        [sys.executable, *TRAIN, f"--config.workdir={workdir}", *extra],
        env=_env(2), capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def _metrics(workdir, stage=1):
    return [json.loads(line) for line in (workdir / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_samples_the_ratio_per_step_and_resumes_exactly(tmp_path):
    whole = _train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = _metrics(tmp_path / "whole")
    kept = [r["encoder_tokens"] / r["tokens"] for r in expected]
    assert all(k < 1.0 for k in kept) and len(set(kept)) > 4, kept  # compressed, a new ratio per step
    stopped = _train(tmp_path / "run", "--config.debug.signal.step=4")
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    resumed = _train(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _metrics(tmp_path / "run")
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(expected, got):
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=f"step {a['step']} {key}")


def test_grad_cache_with_a_compressed_mask_equals_the_plain_gradient():
    """GradCache (micro-batches of 4 of B=8) vs `jax.value_and_grad` of the plain forward, both through
    the host-built mask at ratio 0.4; float32, 1e-5 of each leaf's largest entry."""
    from jasper_jax.losses import ObjectiveConfig
    from jasper_jax.train import grad_cache
    from jasper_jax.train import step as step_lib

    model, _ = student()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 33, size=8)
    ids = np.where(np.arange(32)[None] < lengths[:, None], rng.integers(4, 200, size=(8, 32)), 0).astype(np.int32)
    teacher = rng.normal(size=(8, 8)).astype(np.float32)
    batch = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.asarray((ids > 0).astype(np.int32)),
        "teacher": jnp.asarray(teacher / np.linalg.norm(teacher, axis=1, keepdims=True)),
        "row_mask": jnp.ones(8, bool),
        "compressed_mask": jnp.asarray(CompressionSampling(THRESHOLD, 0.4, 0.4).mask(lengths, 0.4, 32)),
    }
    objective = step_lib.text_objective(ObjectiveConfig())
    frozen = nnx.State({})

    def plain_loss(p):
        outputs, teacher = step_lib.text_forward(nnx.merge(graphdef, p, rest), batch, True)
        return objective(outputs, teacher, batch["row_mask"])

    (loss, _), grads = jax.jit(jax.value_and_grad(plain_loss, has_aux=True))(params)
    cached = grad_cache.gradient_fn(graphdef, objective, micro_batch_size=4)
    (cached_loss, _), cached_grads = jax.jit(cached)(params, frozen, rest, batch)
    np.testing.assert_allclose(float(cached_loss), float(loss), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(cached_grads), jax.tree.leaves(grads), strict=True):
        scale = max(float(np.max(np.abs(np.asarray(y)))), 1e-12)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5 * scale)
    assert any(float(np.max(np.abs(np.asarray(g)))) > 0 for g in jax.tree.leaves(grads))


def _tiny_qwen3(workdir, *overrides):
    from jasper_jax.train.config_base import load_config

    return load_config(
        str(ROOT / "configs" / "tiny.py"),
        [
            f"workdir={workdir}", "progress=false", "model.family=qwen3", f"model.encoder={ENCODER}",
            f"model.token_compression={dict(threshold=THRESHOLD, ratio=0.5, train_ratio=(0.3, 1.0))}",
            "stages.stage1.steps=3", "stages.stage2.steps=3", "stages.stage2.trainable=('.*',)",
            "stages.stage2.trainable_last_layers=0", *overrides,
        ],
    )  # fmt: skip


@pytest.mark.slow
def test_a_stage_without_the_compressor_then_one_that_adds_it(tmp_path):
    """The successor recipe's order: stage 1 trains without a compressor, stage 2 starts from stage 1's
    weights with a fresh one, and only stage 2 compresses."""
    from jasper_jax.train.loop import train
    from tests.train.test_train_e2e import flat, read_params

    train(_tiny_qwen3(tmp_path, "stages.stage1.token_compression=false"), [1, 2])
    first = flat(read_params(tmp_path / "stage1" / "checkpoints", 3))
    second = flat(read_params(tmp_path / "stage2" / "checkpoints", 3))
    assert not any(name.startswith("compressor/") for name in first)
    added = [name for name in second if name.startswith("compressor/")]
    assert added and set(second) - set(first) == set(added)
    assert all(r["encoder_tokens"] < r["tokens"] for r in _metrics(tmp_path, 2))
    assert all("encoder_tokens" not in r for r in _metrics(tmp_path, 1))


def test_a_compressor_cannot_be_removed_by_a_later_stage(tmp_path):
    from jasper_jax.train.stage_build import student_config_for

    settings = ModelSettings(family="qwen3", encoder=ENCODER, token_compression={"threshold": THRESHOLD})
    run = SimpleNamespace(model=settings)
    saved = student_config_for(run, {"fc1": 8}, None).to_dict()
    assert saved["token_compression"] is not None
    with pytest.raises(TrainingError, match="cannot be removed"):
        student_config_for(run, {"fc1": 8}, saved, compress=False)
    without = student_config_for(run, {"fc1": 8}, None, compress=False)
    assert without.token_compression is None
    assert student_config_for(run, {"fc1": 8}, without.to_dict()).token_compression is not None  # added


def test_the_token_compression_config_builds_its_stages():
    """configs/jasper_token_compression.py: a 2048-d teacher from the two transforms, stage 1 without a
    compressor, stage 2 with one at a sampled ratio, stage 3 a pair stage (the shapes compile-check uses)."""
    from jasper_jax.train.config_base import load_config
    from jasper_jax.train.settings import settings_from_config
    from jasper_jax.train.stage_build import abstract_stage_model

    run = settings_from_config(load_config(str(ROOT / "configs" / "jasper_token_compression.py")))
    transforms = [run.data.teacher_transforms[name] for name in ("qwen3-embedding-8b", "qzhou-embedding")]
    widths = [transform.output_dim(width) for transform, width in zip(transforms, (4096, 3584))]
    assert sum(widths) == 2048 == run.stages[1].heads["fc1"]
    assert run.model.train_ratio_range() == (0.3, 1.0)
    first, second = (abstract_stage_model(run, run.stage(n)).config for n in (1, 2))
    assert first.token_compression is None and second.token_compression.threshold == 80
    assert second.encoder.model_type == "qwen3" and second.pooling == "mean"
    assert run.stage(3).is_pair_stage and run.stage(2).data_start == "continue"


def test_pair_batches_get_compressed_masks_and_the_pair_forward_uses_them(tmp_path):
    """A contrastive stage's batches with a token compressor: query and document masks keep the released
    lengths at the batch's ratio; `pair_forward` through them equals the static-ratio calls (1e-6)."""
    from jasper_jax.data.pair_pipeline import make_pair_iterator
    from jasper_jax.train.pair_stage import pair_forward
    from tests.train.test_pair_stage import make_pairs

    pairs = make_pairs(tmp_path)
    sampling = CompressionSampling(THRESHOLD, 0.3, 1.0, seed=1)
    iterator = make_pair_iterator(
        pairs, tmp_path / "data" / "tokenizer", global_batch_size=8, mesh=None, compression=sampling, max_length=32
    )
    model, _ = student()
    for index in range(2):
        batch = next(iterator)
        ratio = sampling.ratio(0, index)
        for prefix in ("query", "document"):
            kept = batch[f"{prefix}_compressed_mask"].sum(-1)
            lengths = batch[f"{prefix}_attention_mask"].sum(-1)
            expected = np.asarray([released_length(int(n), ratio) for n in lengths.ravel()]).reshape(lengths.shape)
            assert kept.tolist() == expected.tolist()
        outputs, _ = pair_forward(model, {k: jnp.asarray(v) for k, v in batch.items()}, True)
        queries = model(jnp.asarray(batch["query_input_ids"]), jnp.asarray(batch["query_attention_mask"]),
                        compression_ratio=ratio)["fc1"]  # fmt: skip
        ids, mask = batch["document_input_ids"], batch["document_attention_mask"]
        documents = model(jnp.asarray(ids.reshape(-1, ids.shape[-1])), jnp.asarray(mask.reshape(-1, ids.shape[-1])),
                          compression_ratio=ratio)["fc1"]  # fmt: skip
        np.testing.assert_allclose(np.asarray(outputs["query/fc1"]), np.asarray(queries), atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(outputs["documents/fc1"]).reshape(documents.shape), np.asarray(documents), atol=1e-6
        )
