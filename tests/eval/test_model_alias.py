"""`jasper-jax eval --model minilm`: the loader's alias works in the evaluation command too."""

import json

from jasper_jax.cli import main


def test_eval_command_takes_the_alias(eval_files, tmp_path):
    lee, news = eval_files
    out = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "--model",
            "minilm",
            "--out",
            str(out),
            "--backend",
            "jax",
            "--lee",
            str(lee),
            "--news",
            str(news),
            "--heldout-size",
            "10",
            "--max-length",
            "32",
            "--no-progress",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == "minilm" and set(result["scores"]["jax"]) == {"pooled"}
    assert -1 <= result["scores"]["jax"]["pooled"]["lee_spearman"] <= 1, result
