"""A contrastive stage in the trainer: configs/tiny.py's stage 1, then a `pairs` stage over the same
generated store (pairs built and mined with the teacher vectors). The step's loss must equal
`pair_objective` on the student's own outputs, and the stage runs end to end, chained, logging every term."""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from jasper_jax.data.pair_pipeline import make_pair_iterator
from jasper_jax.data.pairs import build_pairs, mine_negatives
from jasper_jax.data.store import TeacherStore
from jasper_jax.losses import ObjectiveConfig, pair_objective
from jasper_jax.train.config_base import load_config
from jasper_jax.train.loop import train
from jasper_jax.train.synthetic import generate_tiny_data

ROOT = Path(__file__).resolve().parents[2]


def make_pairs(workdir: Path) -> Path:
    """The tiny config's store (generated as train() would), 60 (text i, text i+1) pairs, 3 mined negatives."""
    tokenizer, store = generate_tiny_data(workdir / "data")
    texts = TeacherStore(store).texts(range(61))
    source = workdir / "pairs.jsonl"
    source.write_text("".join(json.dumps({"query": texts[i], "pos": texts[i + 1]}) + "\n" for i in range(60)))
    build_pairs(source, store, workdir / "pairs0")
    mine_negatives(workdir / "pairs0", workdir / "pairs", negatives=3, pool="store", seed=0)
    return workdir / "pairs"


def test_pair_step_loss_equals_the_objective_on_the_students_outputs(tmp_path):
    import jax
    import optax

    from jasper_jax.models import JasperStudent, StudentConfig
    from jasper_jax.models.bert import BertConfig
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.pair_stage import pair_forward, pair_stage_objective

    pairs = make_pairs(tmp_path)
    batch = next(make_pair_iterator(pairs, tmp_path / "data" / "tokenizer", global_batch_size=8, mesh=None))
    encoder = BertConfig(
        vocab_size=204, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = JasperStudent(StudentConfig(encoder=encoder, heads={"fc1": 32}), rngs=nnx.Rngs(0))
    config = ObjectiveConfig(pair_distill_texts=("queries", "positives"))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-3)
    step_fn = step_lib.train_step_fn(graphdef, tx, pair_stage_objective(config), lambda s: 1e-3, forward=pair_forward)
    state = step_lib.init_train_state(params, tx)
    _, metrics = jax.jit(step_fn)(state, nnx.State({}), rest, batch)
    queries = model(batch["query_input_ids"], batch["query_attention_mask"])["fc1"]
    ids, mask = batch["document_input_ids"], batch["document_attention_mask"]
    documents = model(ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1]))["fc1"].reshape(8, 4, -1)
    expected, _ = pair_objective(
        {"fc1": queries},
        {"fc1": documents},
        batch["teacher_query"],
        batch["teacher_documents"],
        batch["row_mask"],
        batch["document_mask"],
        batch["document_ids"],
        config=config,
    )
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
    assert int(metrics["tokens"]) == int(batch["query_attention_mask"].sum() + mask.sum())
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0


@pytest.mark.slow
def test_a_pair_stage_trains_after_a_distillation_stage(tmp_path):
    pairs = make_pairs(tmp_path)
    config = load_config(
        str(ROOT / "configs" / "tiny.py"),
        [f"workdir={tmp_path}", "progress=false", "stages.stage1.steps=3", "checkpoint.every=2"],
    )
    del config.stages["stage3"]
    config.stages.stage2.steps = 4
    config.stages.stage2.pairs = str(pairs)
    config.stages.stage2.trainable = (".*",)
    config.stages.stage2.batch_size = 8
    config.stages.stage2.objective = {"pair_distill_texts": ("queries", "positives"), "relative_similarity_weight": 0}
    train(config, [1, 2])
    rows = [json.loads(line) for line in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert all(np.isfinite(row[key]) for key in ("loss", "infonce", "score_kl", "cosine/fc1", "similarity/fc1"))
        assert row["valid_rows"] == 8 and row["distill/valid_rows"] == 16
    train(config, [1, 2])  # complete: skipped


def test_a_relative_pairs_folder_is_read_from_the_workdir(tmp_path, monkeypatch):
    """So that a run folder holding its pairs can move: the path must not depend on the current folder."""
    from types import SimpleNamespace

    from jasper_jax.train.pair_stage import pairs_folder

    monkeypatch.chdir(tmp_path)
    run = SimpleNamespace(workdir=Path("runs/x"))
    assert pairs_folder(run, SimpleNamespace(pairs="pairs/mined")) == tmp_path / "runs" / "x" / "pairs" / "mined"
    assert pairs_folder(run, SimpleNamespace(pairs="/data/mined")) == Path("/data/mined")
