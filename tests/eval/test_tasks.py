"""The offline tasks and the per-head evaluation on a tiny model: files read right, scores in range,
deterministic, and the JAX student agrees with its exported PyTorch folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jasper_jax.eval.tasks import news_split, read_lee, read_news


def test_lee_pairs_are_the_upper_triangle(eval_files):
    lee, _ = eval_files
    documents, pairs = read_lee(lee)
    assert len(documents) == 8
    assert len(pairs) == 8 * 7 // 2
    assert all(i < j for i, j, _ in pairs)
    assert dict(((i, j), s) for i, j, s in pairs)[(0, 4)] == pytest.approx(0.8)  # same topic


def test_news_split_is_fixed_cleaned_and_disjoint(eval_files):
    _, news = eval_files
    articles = read_news(news)
    assert len(articles) == 40, "the row without text and the duplicated title must be dropped"
    held_out, train = news_split(news, 10)
    again, _ = news_split(news, 10)
    assert [a.article_id for a in held_out] == [a.article_id for a in again]
    assert len(held_out) == 10 and len(train) == 30
    assert not {a.article_id for a in held_out} & {a.article_id for a in train}
    with pytest.raises(ValueError, match="not enough"):
        news_split(news, 40)


def test_eval_scores_in_range_deterministic_and_backends_agree(eval_files, tiny_bert_folder, tmp_path):
    from jasper_jax.eval.cli import evaluate_model

    lee, news = eval_files
    first = evaluate_model(
        str(tiny_bert_folder), lee=lee, news=news, heldout_size=10, max_length=64, batch_size=8, progress=False
    )
    assert set(first["scores"]) == {"jax", "torch"}
    for backend, per_head in first["scores"].items():
        assert set(per_head) == {"fc1", "fc2", "pooled"}, backend
        for head, values in per_head.items():
            assert -1 <= values["lee_spearman"] <= 1, (backend, head, values)
            assert 0 <= values["news_ndcg_at_10"] <= 1 and 0 <= values["news_mrr_at_10"] <= 1, (backend, head, values)
    assert first["backends_agree"], first["max_backend_difference"]
    second = evaluate_model(
        str(tiny_bert_folder),
        backend="jax",
        lee=lee,
        news=news,
        heldout_size=10,
        max_length=64,
        batch_size=8,
        progress=False,
    )
    assert second["scores"]["jax"] == first["scores"]["jax"], "evaluation must be deterministic"


def test_retrieval_of_identical_texts_is_perfect(eval_files):
    """A source that maps each title and its article to the same vector must score nDCG@10 = MRR@10 = 1."""
    from jasper_jax.eval.encoders import VectorSource
    from jasper_jax.eval.run import evaluate_heads
    from jasper_jax.eval.tasks import news_task

    _, news = eval_files
    held_out, _ = news_split(news, 10)
    index = {a.title: i for i, a in enumerate(held_out)} | {a.text: i for i, a in enumerate(held_out)}

    def compute(texts):
        return {"pooled": np.eye(16, dtype=np.float32)[[index[t] for t in texts]]}

    scores = evaluate_heads(VectorSource(compute, ["pooled"], "oracle"), [news_task(news, 10)])
    assert scores["pooled"]["news_ndcg_at_10"] == pytest.approx(1.0)
    assert scores["pooled"]["news_mrr_at_10"] == pytest.approx(1.0)


def test_retrieval_scores_at_10_equal_a_numpy_reference_and_mtebs_full_ranking(eval_files):
    """NewsTitleRetrieval ranks only 10 documents per query (`RANKED`); its nDCG@10 and MRR@10 must equal a
    NumPy reference from the cosine matrix (one relevant document per query: 1/log2(1 + rank) and 1/rank
    within the top 10, else 0; mteb rounds to 5 decimals, hence 1e-5) and mteb's scores over its default
    ranking of every document. Noisy vectors put many own articles below rank 10 and some at ranks 2-10."""
    from jasper_jax.eval.encoders import VectorSource, normalize_rows
    from jasper_jax.eval.run import evaluate_heads
    from jasper_jax.eval.tasks import news_task

    _, news = eval_files
    held_out, _ = news_split(news, 30)
    rng = np.random.default_rng(0)
    topics = rng.normal(size=(30, 16))
    vectors = {a.text: topics[i] for i, a in enumerate(held_out)}
    vectors |= {a.title: topics[i] + 1.2 * rng.normal(size=16) for i, a in enumerate(held_out)}

    def compute(texts):
        return {"pooled": normalize_rows(np.stack([vectors[t] for t in texts]))}

    titles = normalize_rows(np.stack([vectors[a.title] for a in held_out]))
    articles = normalize_rows(np.stack([vectors[a.text] for a in held_out]))
    similarity = titles @ articles.T
    ranks = 1 + np.sum(similarity > np.diag(similarity)[:, None], axis=1)
    assert (ranks > 10).any() and ((ranks > 1) & (ranks <= 10)).any(), "the vectors must exercise the cut-off"
    ndcg = np.mean(np.where(ranks <= 10, 1 / np.log2(1 + ranks), 0.0))
    mrr = np.mean(np.where(ranks <= 10, 1 / ranks, 0.0))

    source = VectorSource(compute, ["pooled"], "noisy")
    ranked = evaluate_heads(source, [news_task(news, 30)])["pooled"]
    full_task = news_task(news, 30)
    full_task.k_values, full_task._top_k = (1, 3, 5, 10, 20, 100, 1000), 1000  # mteb's default depth
    full = evaluate_heads(source, [full_task])["pooled"]
    assert ranked["news_ndcg_at_10"] == pytest.approx(ndcg, abs=1e-5)
    assert ranked["news_mrr_at_10"] == pytest.approx(mrr, abs=1e-5)
    assert ranked == full


def test_eval_command_writes_results(eval_files, tiny_plain_folder, tmp_path):
    from jasper_jax.cli import main

    lee, news = eval_files
    out = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_plain_folder),
            "--out",
            str(out),
            "--backend",
            "torch",
            "--lee",
            str(lee),
            "--news",
            str(news),
            "--heldout-size",
            "10",
            "--max-length",
            "64",
            "--no-progress",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["scores"]["torch"]) == {"pooled"}
    assert "backends_agree" not in result
