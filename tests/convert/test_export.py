"""Export: the folder loads offline in sentence-transformers and transformers, reproduces `encode` for every
head, and import -> export -> import is bit-identical; for a BERT (MiniLM) and bidirectional Qwen2 and Qwen3
students (a causal Qwen2 / Qwen3 exports as transformers' own model)."""

import json

import numpy as np
import pytest
import torch
from flax import nnx

from jasper_jax.convert import load_model_folder
from jasper_jax.convert.export import PAPER_PROMPTS, export_model
from jasper_jax.encode import encode_texts
from jasper_jax.models.params import flat_params
from tests.convert.convert_helpers import TEXTS

HEADS = {"fc1": 48, "fc2": 16, "fc3": 8}


BIDIRECTIONAL = {"qwen2": "BidirectionalQwen2Model", "qwen3": "BidirectionalQwen3Model"}


@pytest.fixture(scope="module", params=["bert", "qwen2", "qwen3"])
def exported(request, tmp_path_factory, qwen2_folder, qwen3_folder, minilm_folder):
    source = {"bert": minilm_folder, "qwen2": qwen2_folder[0], "qwen3": qwen3_folder[0]}[request.param]
    causal = False if request.param == "qwen3" else None  # a Qwen3 folder loads causal by default
    loaded = load_model_folder(source, heads=HEADS, rngs=nnx.Rngs(7), causal=causal)
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    export_model(loaded.model, loaded.config, loaded.tokenizer_folder, out, active_head="fc2", max_seq_length=128)
    return request.param, loaded, out


def test_import_export_import_is_bit_identical(exported, tmp_path):
    _, original, out = exported
    again = load_model_folder(out)
    assert again.config == original.config and again.default_head == "fc2"
    before, after = flat_params(original.model), flat_params(again.model)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), key
    export_model(again.model, again.config, again.tokenizer_folder, tmp_path, active_head="fc2", max_seq_length=128)
    assert (tmp_path / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (tmp_path / "2_JasperHeads" / "model.safetensors").read_bytes() == (
        out / "2_JasperHeads" / "model.safetensors"
    ).read_bytes()


def test_sentence_transformers_reproduces_encode_for_every_head(exported):
    from sentence_transformers import SentenceTransformer

    _, _, out = exported
    model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu", local_files_only=True)
    assert model.prompts["s2p_query"] == PAPER_PROMPTS["s2p_query"]
    assert model.encode(TEXTS).shape == (len(TEXTS), HEADS["fc2"])  # the active head by default
    for head in HEADS:
        ours = encode_texts(out, TEXTS, head=head, progress=False, batch_size=4)
        theirs = model.encode(TEXTS, head=head, batch_size=3)
        cosine = (ours * theirs).sum(1)
        assert cosine.min() >= 0.99999, (head, cosine)
    selected = SentenceTransformer(str(out), trust_remote_code=True, device="cpu", config_kwargs={"jasper_head": "fc3"})
    np.testing.assert_allclose(selected.encode(TEXTS), model.encode(TEXTS, head="fc3"), atol=1e-6)
    ours = encode_texts(out, TEXTS, head="fc1", prompt="s2s_query", progress=False)
    theirs = model.encode(TEXTS, head="fc1", prompt_name="s2s_query")
    assert (ours * theirs).sum(1).min() >= 0.99999


def test_automodel_reproduces_encode_for_every_head(exported):
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    family, _, out = exported
    model = AutoModel.from_pretrained(str(out), trust_remote_code=True, local_files_only=True).eval()
    expected_class = BIDIRECTIONAL.get(family, "BertModel")
    assert type(model).__name__ == expected_class
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    heads = load_file(str(out / "2_JasperHeads" / "model.safetensors"))
    for head in HEADS:
        vectors = pooled.numpy() @ heads[f"{head}.weight"].T + heads[f"{head}.bias"]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ours = encode_texts(out, TEXTS, head=head, progress=False)
        assert (ours * vectors).sum(1).min() >= 0.99999, head


def test_export_files(exported):
    family, _, out = exported
    config = json.loads((out / "config.json").read_text())
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_JasperHeads", "3_Normalize"]
    for qwen in BIDIRECTIONAL:
        assert (out / f"modeling_jasper_{qwen}.py").exists() == (family == qwen)
    if family in BIDIRECTIONAL:
        assert config["auto_map"]["AutoModel"] == f"modeling_jasper_{family}.{BIDIRECTIONAL[family]}"
    assert json.loads((out / "2_JasperHeads" / "config.json").read_text())["heads"] == HEADS


def test_export_command_from_a_sentence_transformers_folder(tmp_path, minilm_folder):
    """`jasper-jax export --checkpoint MiniLM --out DIR`: a head-less student exports as Transformer, Pooling,
    Normalize and sentence-transformers gives the original model's vectors."""
    from sentence_transformers import SentenceTransformer

    from jasper_jax import cli

    out = tmp_path / "minilm"
    assert cli.main(["export", "--checkpoint", str(minilm_folder), "--out", str(out)]) == 0
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    exported = SentenceTransformer(str(out), trust_remote_code=True, device="cpu").encode(TEXTS)
    original = SentenceTransformer(str(minilm_folder), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(exported, original, atol=1e-6)
    np.testing.assert_allclose(encode_texts(out, TEXTS, progress=False), original, atol=1e-5)


def test_export_command_rejects_a_folder_that_is_neither_model_nor_checkpoint(tmp_path, capsys):
    from jasper_jax import cli

    (tmp_path / "ckpt" / "1").mkdir(parents=True)
    assert cli.main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("jasper-jax export: ") and "nor a training checkpoint" in error, error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "out").exists(), error


def test_export_command_from_a_training_checkpoint(tmp_path, minilm_folder):
    """A checkpoint written by the trainer's StageCheckpointer exports like the model it holds."""
    import jax.numpy as jnp

    from jasper_jax import cli
    from jasper_jax.train.checkpoint import StageCheckpointer
    from jasper_jax.train.step import TrainState

    loaded = load_model_folder(minilm_folder, heads={"fc1": 24, "fc2": 8}, rngs=nnx.Rngs(3))
    params = nnx.state(loaded.model, nnx.Param)
    trainable = nnx.filter_state(params, lambda path, _: path[0] == "heads")
    frozen = nnx.filter_state(params, lambda path, _: path[0] != "heads")
    zero = jnp.asarray(0, jnp.int32)
    state = TrainState(step=zero, params=trainable, opt_state={}, nonfinite_consecutive=zero, nonfinite_total=zero)
    workdir = tmp_path / "work"
    checkpointer = StageCheckpointer(workdir / "stage1" / "checkpoints", every=1, keep=2, async_save=False)
    # demo-style: started from MiniLM (max_seq_length 256), trained at 64 tokens
    training_config = {"model": {"source": "minilm"}, "data": {"max_length": 64}}
    metadata = {"stage": 1, "student_config": loaded.config.to_dict(), "config": training_config}
    checkpointer.save(7, state, frozen, None, metadata)
    checkpointer.close()

    out = tmp_path / "out"
    assert cli.main(["export", "--checkpoint", str(workdir), "--out", str(out), "--head", "fc2"]) == 0
    again = load_model_folder(out)
    assert again.config == loaded.config and again.default_head == "fc2"
    # the export keeps the source model's own max length, not the training length (issue 19 item 7)
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    assert again.max_seq_length == 256
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), trust_remote_code=True, device="cpu").max_seq_length == 256
    before, after = flat_params(loaded.model), flat_params(again.model)
    assert all(np.array_equal(before[key], after[key]) for key in before)
    expected = encode_texts(loaded, TEXTS, head="fc2", progress=False)
    np.testing.assert_allclose(encode_texts(out, TEXTS, progress=False), expected, atol=1e-6)
    # `encode` reads the checkpoint directly too
    np.testing.assert_allclose(encode_texts(workdir, TEXTS, head="fc2", progress=False), expected, atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_causal_qwen_exports_as_plain_transformers_model(family, qwen2_folder, qwen3_folder, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    source, reference = {"qwen2": qwen2_folder, "qwen3": qwen3_folder}[family]
    loaded = load_model_folder(source, heads={"fc1": 8}, causal=True)
    export_model(loaded.model, loaded.config, loaded.tokenizer_folder, tmp_path)
    assert not (tmp_path / f"modeling_jasper_{family}.py").exists()
    assert load_model_folder(tmp_path).config.encoder.causal
    model = AutoModel.from_pretrained(str(tmp_path), local_files_only=True).eval()
    assert type(model).__name__ == {"qwen2": "Qwen2Model", "qwen3": "Qwen3Model"}[family]
    batch = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)(
        TEXTS, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
        expected = reference(**batch).last_hidden_state.numpy()
    ours = np.asarray(
        loaded.model.encoder(
            batch["input_ids"].numpy().astype(np.int32), batch["attention_mask"].numpy().astype(np.int32)
        )
    )
    valid = batch["attention_mask"].numpy().astype(bool)
    assert np.abs(hidden - expected).max() < 1e-5  # same weights (sdpa vs eager attention)
    assert np.abs(ours[valid] - expected[valid]).max() < 1e-5


def test_source_max_seq_length_reads_the_source_model(minilm_folder, tmp_path):
    from jasper_jax.loader import source_max_seq_length

    assert source_max_seq_length({"model": {"source": "minilm"}}) == 256
    assert source_max_seq_length({"model": {"source": str(minilm_folder)}}) == 256
    assert source_max_seq_length({"model": {"source": "random"}}) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert source_max_seq_length({"model": {"source": str(tmp_path)}}) is None  # "no limit" is not a length
