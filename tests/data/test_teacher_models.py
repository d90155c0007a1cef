"""The paper's teachers as their model cards use them, on tiny random models in the same layouts: the chosen
`2_Dense_*` head (both backends), NV-Embed's EOS and instruction conventions, remote code, a worker in another
Python, and the JAX backend data-parallel over 8 devices against 1."""

from __future__ import annotations

import shutil
import sys

import jax
import numpy as np
import pytest

from jasper_jax.cli import main
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.teacher_encoding import EncodeSettings, TeacherSpec, check_teacher, encode_store, load_encoder
from jasper_jax.data.torch_teacher import prepare_texts
from tests.data.data_helpers import tree_hash
from tests.data.teacher_models import name_modules, remote_code_model, stella_layout

TEXTS = ["A man is playing a guitar.", "The cat sits on the mat.", "Stocks fell sharply today.", "Il pleut.", "x"]


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory, minilm_folder):
    root = tmp_path_factory.mktemp("teachers")
    stella = stella_layout(root / "stella", minilm_folder)
    reference = root / "stella_24"  # the same model, its modules.json naming 2_Dense_24: plain ST's answer
    shutil.copytree(stella, reference)
    name_modules(reference, 24)
    return {"stella": stella, "stella_24": reference, "remote": remote_code_model(root / "remote", minilm_folder)}


def st_encode(folder, texts, **kwargs):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", **kwargs)
    return unit(model.encode(texts, convert_to_numpy=True))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_dense_picks_that_head_in_both_backends(tmp_path, models, backend):
    spec = TeacherSpec("stella", str(models["stella"]), backend=backend, dense=24)
    encode_store(TEXTS, tmp_path / "s", [spec], dtype="float32", shard_rows=2, progress=False)
    vectors = TeacherStore(tmp_path / "s").teacher_vectors(range(len(TEXTS)))
    assert vectors.shape == (5, 24)
    np.testing.assert_allclose(
        vectors, st_encode(models["stella_24"], TEXTS), atol=1e-5 if backend == "torch" else 1e-4
    )


def test_several_heads_and_none_chosen_or_a_missing_one_are_refused(tmp_path, models, capsys):
    with pytest.raises(ValueError, match=r"2 Dense heads \(2_Dense_16, 2_Dense_24\).*dense=D \(one of 16, 24\)"):
        check_teacher(TeacherSpec("stella", str(models["stella"])))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one\ntwo\n")
    out = tmp_path / "store"
    argv = ["teachers", "encode", "--corpus", str(corpus), "--out", str(out), "--teacher"]
    assert main(argv + [f"{models['stella']},dense=8192"]) == 1
    error = capsys.readouterr().err.strip()
    assert "no Dense head with dense=8192; its heads: 16, 24" in error and len(error.splitlines()) == 1
    assert main(argv + [str(tmp_path)]) != 0  # a folder that is not a model
    assert "not a model folder" in capsys.readouterr().err
    assert not out.exists()


def test_eos_is_appended_exactly_once_and_the_instruction_only_when_asked():
    assert prepare_texts(["a", "b</s>"], eos="</s>") == ["a</s>", "b</s>"]
    assert prepare_texts(["a"], prompt="p: ") == ["p: a"]
    assert prepare_texts(["a"], instruction="Find it", eos="</s>") == ["Instruct: Find it\nQuery: a</s>"]
    assert prepare_texts(["a"], instruction="") == ["a"]


def test_nv_embed_conventions_reach_the_model(models):
    settings = EncodeSettings()
    spec = TeacherSpec("t", str(models["stella"]), dense=16, append_eos=True, instruction="Find", padding_side="right")
    teacher = load_encoder(spec, settings=settings)
    assert teacher.model.tokenizer.padding_side == "right"
    got = unit(teacher(TEXTS[:3] + [TEXTS[3] + "[SEP]"]))
    expected = st_encode(models["stella"], [f"Instruct: Find\nQuery: {t}[SEP]" for t in TEXTS[:4]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = unit(load_encoder(TeacherSpec("t", str(models["stella"]), dense=16), settings=settings)(TEXTS[:4]))
    np.testing.assert_allclose(plain, st_encode(models["stella"], TEXTS[:4]), atol=1e-5)
    assert np.abs(plain - got).max() > 1e-3


def test_a_remote_code_model_needs_trust_and_is_run_by_its_own_code(tmp_path, models):
    import torch
    from transformers import AutoModel, AutoTokenizer

    with pytest.raises(ValueError, match="trust_remote_code=true"):
        load_encoder(TeacherSpec("nv", str(models["remote"])))
    spec = TeacherSpec("nv", str(models["remote"]), trust_remote_code=True)
    encode_store(TEXTS, tmp_path / "s", [spec], dtype="float32", shard_rows=4, progress=False)
    model = AutoModel.from_pretrained(str(models["remote"]), trust_remote_code=True)
    assert type(model).__name__ == "TinyRemoteModel"
    batch = AutoTokenizer.from_pretrained(str(models["remote"]))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.double()
    mask = batch["attention_mask"].double()[..., None]
    expected = unit(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    np.testing.assert_allclose(TeacherStore(tmp_path / "s").teacher_vectors(range(5)), expected, atol=1e-5)


def test_a_worker_in_another_python_writes_the_same_store(tmp_path, models):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    common = ["teachers", "encode", "--corpus", str(corpus), "--teacher", f"{models['stella']},dense=24,name=stella"]
    common += ["--shard-rows", "2", "--no-progress", "--backend", "torch"]
    assert main(common + ["--out", str(tmp_path / "here")]) == 0
    assert main(common + ["--out", str(tmp_path / "there"), "--python", sys.executable]) == 0
    assert tree_hash(tmp_path / "there") == tree_hash(tmp_path / "here")


def test_jax_backend_on_8_devices_equals_1_device(models):
    assert len(jax.local_devices()) == 8
    spec = TeacherSpec("stella", str(models["stella"]), backend="jax", dense=24)
    one = load_encoder(spec, settings=EncodeSettings(batch_size=8, devices=1))(TEXTS * 3)
    eight = load_encoder(spec, settings=EncodeSettings(batch_size=8))(TEXTS * 3)
    np.testing.assert_allclose(eight, one, atol=1e-5)
    np.testing.assert_allclose(one[:5], one[5:10], atol=1e-6)  # corpus order kept through length-sorted batches
