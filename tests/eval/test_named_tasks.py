"""`jasper-jax eval --tasks NAME,...`: any mteb task by name. The hub is unreachable, so `mteb.get_tasks`
is replaced by one returning a local task (the Lee files under another name): its main score must equal
the offline Lee task's Spearman for the same model, and an unknown name is one clear error line."""

from __future__ import annotations

import json

import mteb
import pytest

from jasper_jax import cli
from jasper_jax.eval.cli import evaluate_model
from jasper_jax.eval.tasks import lee_task


@pytest.fixture
def local_mteb(monkeypatch, eval_files):
    lee, _ = eval_files

    def get_tasks(tasks=None, **kwargs):
        found = []
        for name in tasks:
            if name != "LocalLeeCopy":
                raise KeyError(f"{name} not found")
            base = type(lee_task(lee))
            renamed = type("LocalLeeCopy", (base,), {"metadata": base.metadata.model_copy(update={"name": name})})
            found.append(renamed())
        return found

    monkeypatch.setattr(mteb, "get_tasks", get_tasks)


def test_a_named_task_reports_its_main_score(local_mteb, eval_files, tiny_bert_folder):
    lee, news = eval_files
    common = dict(backend="jax", lee=lee, news=news, heldout_size=10, max_length=64, batch_size=8, progress=False)
    common["heads"] = ["pooled"]
    named = evaluate_model(str(tiny_bert_folder), tasks=["LocalLeeCopy", "NewsTitleRetrieval"], **common)
    default = evaluate_model(str(tiny_bert_folder), **common)
    assert named["settings"]["tasks"] == ["LocalLeeCopy", "NewsTitleRetrieval"]
    assert default["settings"]["tasks"] == ["LeeDocumentSimilarity", "NewsTitleRetrieval"]
    for head, values in named["scores"]["jax"].items():
        expected = default["scores"]["jax"][head]
        assert sorted(values) == ["LocalLeeCopy/test/main_score", "news_mrr_at_10", "news_ndcg_at_10"], values
        assert values["LocalLeeCopy/test/main_score"] == pytest.approx(expected["lee_spearman"], abs=1e-12)
        assert values["news_ndcg_at_10"] == expected["news_ndcg_at_10"]


def test_an_unknown_task_is_one_error_line(local_mteb, eval_files, tiny_bert_folder, tmp_path, capsys):
    lee, news = eval_files
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(tiny_bert_folder), "--out", str(out), "--backend", "jax"]
    code = cli.main(argv + ["--lee", str(lee), "--news", str(news), "--tasks", "NoSuchTask", "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("jasper-jax eval: ") and "NoSuchTask" in error, error
    assert len(error.splitlines()) == 1 and not out.exists()
    code = cli.main(
        argv
        + [
            "--lee",
            str(lee),
            "--news",
            str(news),
            "--tasks",
            "LocalLeeCopy",
            "--heldout-size",
            "10",
            "--heads",
            "pooled",
        ]
    )
    assert code == 0 and "LocalLeeCopy/test/main_score" in json.loads(out.read_text())["scores"]["jax"]["pooled"]
