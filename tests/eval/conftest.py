"""Fixtures of the evaluation tests (inputs built by `eval_inputs`; nothing is downloaded)."""

from __future__ import annotations

import pytest

from tests.eval.eval_inputs import tiny_bert_export, write_lee_files, write_news_csv


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_files")
    return write_lee_files(root / "lee"), write_news_csv(root / "news" / "NewsArticles.csv")


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory, minilm_folder):
    """Exported tiny random BERT with heads fc1 (48) and fc2 (16)."""
    return tiny_bert_export(
        tmp_path_factory.mktemp("tiny_bert") / "model", {"fc1": 48, "fc2": 16}, seed=0, tokenizer_folder=minilm_folder
    )


@pytest.fixture(scope="session")
def tiny_plain_folder(tmp_path_factory, minilm_folder):
    """Exported tiny random BERT without heads (a plain sentence-transformers model, like a teacher)."""
    return tiny_bert_export(tmp_path_factory.mktemp("tiny_plain") / "model", {}, seed=1, tokenizer_folder=minilm_folder)
