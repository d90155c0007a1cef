"""Export of a student with a token compressor, in the released Jasper-Token-Compression layout
(`JasperV2Encoder`; weights `model.*`, `jasper_mlp.*`, `linear_1.*`; the shipped `modeling_jasper_jax_v2.py`):

- `SentenceTransformer(DIR, trust_remote_code=True).encode(texts, compression_ratio=R)` equals our JAX
  `encode_texts(DIR, texts, compression_ratio=R)` per text (cosine >= 0.99999) for R in 1.0, 0.5, 0.33,
  right and left padded, causal (as released) and bidirectional, and the ratio reaches the model (0.33 and
  1.0 differ on the long texts);
- `AutoModel.from_pretrained(DIR, trust_remote_code=True)(**batch, compression_ratio=R)` gives the same vectors;
- export -> import gives the exact parameters and config, and a second export the same weight bytes;
- what the layout cannot hold (several heads, another pooling) is refused with one line naming it.

Tiny random Qwen3 (tests/convert/conftest.py) with a fresh compressor of threshold 8, so that most texts
are compressed."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from jasper_jax.convert import ConversionError, load_model_folder
from jasper_jax.convert.export import export_model
from jasper_jax.encode import encode_texts
from jasper_jax.models.params import flat_params
from tests.convert.convert_helpers import compressed_student, compression_texts

RATIOS = (1.0, 0.5, 0.33)


@pytest.fixture(scope="module", params=[True, False], ids=["causal", "bidirectional"])
def exported(request, tmp_path_factory, qwen3_folder):
    model, config = compressed_student(qwen3_folder[0], causal=request.param)
    out = tmp_path_factory.mktemp("compressed")
    export_model(model, config, qwen3_folder[0], out, max_seq_length=128)
    return model, config, out


def test_texts_cross_the_threshold(exported):
    from jasper_jax.data.tokenization import load_tokenizer

    _, config, out = exported
    lengths = [len(row) for row in load_tokenizer(out, 128).encode(compression_texts(), "")]
    threshold = config.token_compression.threshold
    assert min(lengths) <= threshold < 4 * threshold < max(lengths), lengths


def test_export_import_round_trip_is_exact(exported, tmp_path):
    model, config, out = exported
    again = load_model_folder(out)
    assert again.config == config and again.default_head == "fc1"
    before, after = flat_params(model), flat_params(again.model)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), key
    export_model(again.model, again.config, again.tokenizer_folder, tmp_path, max_seq_length=128)
    assert (tmp_path / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_released_layout_files(exported):
    from safetensors.numpy import load_file

    _, config, out = exported
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "qwen3" and hf["architectures"] == ["JasperV2Encoder"]
    assert hf["auto_map"] == {"AutoModel": "modeling_jasper_jax_v2.JasperV2Encoder"}
    assert (hf["jasper_compression_threshold"], hf["jasper_compression_ratio"]) == (8, 0.5)
    assert (out / "modeling_jasper_jax_v2.py").exists()
    keys = set(load_file(str(out / "model.safetensors")))
    assert {"jasper_mlp.gate_proj.weight", "jasper_mlp.up_proj.weight", "jasper_mlp.down_proj.weight"} <= keys
    assert {"linear_1.weight", "linear_1.bias"} <= keys
    assert all(key.startswith(("model.", "jasper_mlp.", "linear_1.")) for key in keys)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Normalize"] and modules[0]["kwargs"] == ["compression_ratio"]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_sentence_transformers_encode_takes_the_ratio(exported, padding_side):
    from sentence_transformers import SentenceTransformer

    _, _, out = exported
    model = SentenceTransformer(
        str(out),
        trust_remote_code=True,
        device="cpu",
        local_files_only=True,
        processor_kwargs={"padding_side": padding_side},
    )
    texts = compression_texts()
    assert model.get_embedding_dimension() == 24
    theirs = {ratio: model.encode(texts, compression_ratio=ratio, batch_size=3) for ratio in RATIOS}
    for ratio in RATIOS:
        ours = encode_texts(out, texts, compression_ratio=ratio, progress=False, batch_size=4)
        cosine = (ours * theirs[ratio]).sum(1)
        assert cosine.min() >= 0.99999, (ratio, cosine)
    assert (theirs[0.33] * theirs[1.0]).sum(1).min() < 0.9999  # the ratio reached the model
    default = model.encode(texts, batch_size=3)  # the exported default ratio, 0.5
    assert np.abs(default - theirs[0.5]).max() < 1e-6


def test_automodel_takes_the_ratio(exported):
    from transformers import AutoModel, AutoTokenizer

    _, _, out = exported
    model, info = AutoModel.from_pretrained(
        str(out), trust_remote_code=True, local_files_only=True, output_loading_info=True
    )
    assert type(model).__name__ == "JasperV2Encoder" and not info["missing_keys"] and not info["unexpected_keys"]
    model.eval()
    texts = compression_texts()
    batch = AutoTokenizer.from_pretrained(str(out), local_files_only=True)(texts, padding=True, return_tensors="pt")
    for ratio in (0.33, 1.0):
        with torch.no_grad():
            vectors = model(**batch, compression_ratio=ratio).numpy()
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ours = encode_texts(out, texts, compression_ratio=ratio, progress=False)
        assert (ours * vectors).sum(1).min() >= 0.99999, ratio


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: dataclasses.replace(c, heads={"fc1": 24, "fc2": 8}), r"exactly one head.*\['fc1', 'fc2'\]"),
        (lambda c: dataclasses.replace(c, pooling="last"), "mean-pools; this student's pooling is 'last'"),
    ],
)
def test_what_the_layout_cannot_hold_is_refused(qwen3_folder, tmp_path, change, message):
    from flax import nnx

    from jasper_jax.models.student import JasperStudent

    _, config = compressed_student(qwen3_folder[0])
    config = change(config)
    with pytest.raises(ConversionError, match=message):
        export_model(JasperStudent(config, rngs=nnx.Rngs(0)), config, qwen3_folder[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()
