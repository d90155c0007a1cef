"""`jasper-jax eval --compression-ratios`: a model with a token compressor is evaluated at each ratio (one
`by_compression_ratio` entry per ratio, `scores` the first one's), the JAX backend and the torch backend
(our export, the released JasperV2Encoder layout) agree per ratio within eval's 1e-3, the default is the
model's own ratio, a compressed folder that is not our export (the released layout) is exported for the
torch side, and ratios for a model without a compressor or that are no ratio are one error line.

Tiny random Qwen3 with a compressor of threshold 8 (the eval texts are far longer), exported."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from jasper_jax import cli
from jasper_jax.eval.cli import evaluate_model


@pytest.fixture(scope="module")
def compressed_folder(tmp_path_factory):
    from jasper_jax.convert.export import export_model
    from tests.convert.convert_helpers import compressed_student, save_random_qwen2

    root = tmp_path_factory.mktemp("compressed_eval")
    save_random_qwen2(root / "source", family="qwen3", head_dim=16)
    model, config = compressed_student(root / "source", head_dim=16)
    return export_model(model, config, root / "source", root / "export", max_seq_length=64)


def _evaluate(folder, eval_files, **options):
    lee, news = eval_files
    return evaluate_model(
        str(folder), lee=lee, news=news, heldout_size=10, max_length=64, batch_size=8, progress=False, **options
    )


def test_each_ratio_is_one_entry_and_the_backends_agree_per_ratio(compressed_folder, eval_files, tmp_path, capsys):
    lee, news = eval_files
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(compressed_folder), "--out", str(out), "--lee", str(lee), "--news", str(news)]
    argv += ["--heldout-size", "10", "--max-length", "64", "--batch-size", "8", "--no-progress"]
    assert cli.main([*argv, "--compression-ratios", "1.0,0.33"]) == 0
    printed = capsys.readouterr().out
    assert "ratio=1  " in printed and "ratio=0.33  " in printed, printed
    result = json.loads(out.read_text())
    assert result["settings"]["compression_ratios"] == [1.0, 0.33]
    entries = result["by_compression_ratio"]
    assert [entry["compression_ratio"] for entry in entries] == [1.0, 0.33]
    for entry in entries:
        assert set(entry["scores"]) == {"jax", "torch"}
        assert set(entry["scores"]["jax"]) == {"fc1", "pooled"} and set(entry["scores"]["torch"]) == {"fc1"}
        assert entry["backends_agree"] and entry["max_backend_difference"] <= 1e-3, entry
    assert result["scores"] == entries[0]["scores"]  # existing readers see the first ratio
    assert result["backends_agree"]
    assert result["max_backend_difference"] == max(entry["max_backend_difference"] for entry in entries)
    first, second = (entry["scores"]["jax"]["fc1"] for entry in entries)
    assert first != second, "the ratio must reach the model"


def test_default_is_the_model_ratio_and_a_released_layout_is_exported_for_torch(
    compressed_folder, eval_files, tmp_path
):
    """The released folder's own modules (custom_st.JasperTransformer, its modeling file) are not ours:
    here they are absent altogether, so the torch side can only run through our export."""
    released = tmp_path / "released"
    shutil.copytree(compressed_folder, released)
    (released / "modeling_jasper_jax_v2.py").unlink()
    modules = json.loads((released / "modules.json").read_text())
    modules[0]["type"] = "custom_st.JasperTransformer"
    (released / "modules.json").write_text(json.dumps(modules))
    result = _evaluate(released, eval_files)
    assert result["settings"]["compression_ratios"] == [0.5]
    assert [entry["compression_ratio"] for entry in result["by_compression_ratio"]] == [0.5]
    assert result["backends_agree"], result["max_backend_difference"]


@pytest.mark.parametrize(
    "model, ratios, message",
    [
        ("plain", "0.5", "--compression-ratios given but the model has no token compressor"),
        ("compressed", "0.5,abc", "--compression-ratios: 'abc' is not a number"),
        ("compressed", "1.5", r"--compression-ratios=1.5; it must be in \(0, 1\]"),
    ],
)
def test_bad_ratios_are_one_error_line(
    model, ratios, message, tiny_bert_folder, compressed_folder, eval_files, tmp_path, capsys
):
    lee, news = eval_files
    folder = {"plain": tiny_bert_folder, "compressed": compressed_folder}[model]
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(folder), "--out", str(out), "--lee", str(lee), "--news", str(news)]
    code = cli.main([*argv, "--backend", "jax", "--compression-ratios", ratios, "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("jasper-jax eval: ") and len(error.splitlines()) == 1, error
    assert re.search(message, error), error
    assert not out.exists()
