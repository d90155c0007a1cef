"""Pair data: `pairs texts/build/mine` (index over the store's rows, mining vs a brute-force NumPy
reference), bad input refused with one line naming the line and nothing written, and the pair pipeline
(contract against the store, sharded global batches, host slices, exact resume)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from jasper_jax import cli
from jasper_jax.data.pair_pipeline import make_pair_iterator
from jasper_jax.data.pairs import NO_ROW, PairsIndex, build_pairs, distinct_texts, mine_negatives
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.tokenization import load_tokenizer

QUERIES = [f"question {i} about topic {i % 3}?" for i in range(10)]
DOCS = [f"document {i} tells a story of topic {i % 3}. " * (1 + i % 4) for i in range(14)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def pair_rows():
    """Strings and lists as in sentence-transformers files; query 0 has two positives, query 9 no negatives."""
    rows = [{"query": QUERIES[0], "pos": [DOCS[0], DOCS[1]], "neg": [DOCS[5], DOCS[6]]}]
    rows += [{"query": QUERIES[i], "pos": DOCS[i], "neg": [DOCS[(i + 4) % 14]]} for i in range(1, 9)]
    rows += [{"query": QUERIES[9], "pos": DOCS[9]}]
    return rows


@pytest.fixture
def pairs_input(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", pair_rows())


@pytest.fixture
def store_path(make_store, pairs_input):
    texts = distinct_texts(pairs_input) + ["an unrelated text in the store"]
    return make_store(texts, dims={"a": 8, "b": 4}, shard_rows=5)


@pytest.fixture
def pairs_path(tmp_path, pairs_input, store_path):
    build_pairs(pairs_input, store_path, tmp_path / "pairs")
    return tmp_path / "pairs"


def test_build_indexes_every_text_once_over_the_store_rows(pairs_path, store_path):
    index = PairsIndex(pairs_path)
    store = TeacherStore(store_path)
    rows = np.asarray(index.rows)
    assert rows.shape == (11, 4) and index.negatives == 2  # query 0 gives two examples
    expected = [(QUERIES[0], DOCS[0], [DOCS[5], DOCS[6]]), (QUERIES[0], DOCS[1], [DOCS[5], DOCS[6]])]
    expected += [(QUERIES[i], DOCS[i], [DOCS[(i + 4) % 14]]) for i in range(1, 9)] + [(QUERIES[9], DOCS[9], [])]
    for row, (query, positive, negatives) in zip(rows, expected):
        assert store.texts(int(row[0])) == query and store.texts(int(row[1])) == positive
        given = [int(r) for r in row[2:] if r != NO_ROW]
        assert store.texts(given) == negatives
        assert list(row[2 + len(negatives) :]) == [NO_ROW] * (2 - len(negatives))
    assert rows[0, 0] == rows[1, 0]  # the same query text is one store row


def test_pairs_texts_lists_the_distinct_texts(tmp_path, pairs_input):
    assert cli.main(["pairs", "texts", "--input", str(pairs_input), "--out", str(tmp_path / "c.jsonl")]) == 0
    written = [json.loads(line)["text"] for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert written == distinct_texts(pairs_input) and len(written) == len(set(written)) == 10 + 13  # DOCS[13] unused


@pytest.mark.parametrize(
    "row, line_message",
    [
        ({"query": "", "pos": DOCS[0]}, "query is empty"),
        ({"query": "   ", "pos": DOCS[0]}, "query is empty"),
        ({"query": QUERIES[1], "pos": DOCS[1], "neg": [DOCS[1]]}, "equals a positive"),
        ({"query": QUERIES[1], "pos": "a text nobody encoded"}, "not in the store"),
        ({"query": QUERIES[1]}, "no 'pos' field"),
        ({"query": QUERIES[1], "pos": DOCS[1], "neg": 3}, "must be a string or a list"),
    ],
)
def test_bad_input_is_one_line_naming_the_line_and_nothing_is_written(row, line_message, tmp_path, store_path, capsys):
    source = write_jsonl(tmp_path / "bad.jsonl", pair_rows()[:3] + [row] + pair_rows()[3:])
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(
        ["pairs", "build", "--input", str(source), "--store", str(store_path), "--out", str(tmp_path / "o")]
    )
    error = capsys.readouterr().err.strip()
    assert code != 0 and error.startswith("jasper-jax pairs: ") and len(error.splitlines()) == 1, error
    assert "line 4" in error and line_message in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def ref_mine(store, rows, negatives, threshold, pool):
    """Brute force from the definition: top-k by teacher cosine excluding the query, the query's positives
    and candidates above threshold * the positive's score; ties by lower row."""
    vectors = store.teacher_vectors(np.arange(len(store)))
    result = []
    for query, positive, *_ in rows:
        positives = {int(p) for q, p, *_ in rows if q == query}
        bar = threshold * float(vectors[query] @ vectors[positive])
        scored = [
            (-float(vectors[query] @ vectors[c]), c)
            for c in pool
            if c != query and c not in positives and float(vectors[query] @ vectors[c]) <= bar
        ]
        chosen = [c for _, c in sorted(scored)[:negatives]]
        result.append(chosen + [NO_ROW] * (negatives - len(chosen)))
    return np.array(result)


@pytest.mark.parametrize("pool, threshold", [("documents", 0.95), ("store", 0.5), ("store", float("inf"))])
def test_mine_equals_brute_force_reference(pairs_path, store_path, tmp_path, pool, threshold):
    manifest = mine_negatives(pairs_path, tmp_path / "mined", negatives=3, threshold=threshold, pool=pool)
    mined = np.asarray(PairsIndex(tmp_path / "mined").rows)
    original = np.asarray(PairsIndex(pairs_path).rows)
    store = TeacherStore(store_path)
    candidates = np.unique(original[:, 1:][original[:, 1:] != NO_ROW]) if pool == "documents" else np.arange(len(store))
    np.testing.assert_array_equal(mined[:, :2], original[:, :2])
    # float32 scores against float32 scores: the same ordering up to exact ties (none in random vectors)
    np.testing.assert_array_equal(mined[:, 2:], ref_mine(store, original, 3, threshold, candidates))
    assert manifest["mined"]["threshold"] == threshold


def test_mine_sampling_is_seeded_and_draws_from_the_top(pairs_path, tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        mine_negatives(pairs_path, tmp_path / name, negatives=2, sample_from=6, seed=seed, pool="store")
        runs[name] = np.asarray(PairsIndex(tmp_path / name).rows)
    mine_negatives(pairs_path, tmp_path / "top", negatives=6, pool="store")
    top = np.asarray(PairsIndex(tmp_path / "top").rows)
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])
    for mined, best in zip(runs["a"], top):
        assert set(mined[2:]) <= set(best[2:])


@pytest.fixture(scope="module")
def tokenizer(minilm_folder):
    return load_tokenizer(minilm_folder, 32)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_pair_batch_contract_against_the_store(pairs_path, store_path, tokenizer):
    iterator = make_pair_iterator(pairs_path, tokenizer, global_batch_size=4, mesh=None, query_prompt="q: ")
    batch = next(iterator)
    store, rows = TeacherStore(store_path), np.asarray(PairsIndex(pairs_path).rows)
    assert batch["document_input_ids"].shape[:2] == (4, 3) and batch["teacher_documents"].shape == (4, 3, 12)
    queries = tokenizer.batch(store.texts(rows[:4, 0]), "q: ")
    np.testing.assert_array_equal(batch["query_input_ids"], queries["input_ids"])
    np.testing.assert_allclose(batch["teacher_query"], store.teacher_vectors(rows[:4, 0]), atol=0)
    filled = np.where(rows[:4, 1:] == NO_ROW, rows[:4, 1:2], rows[:4, 1:])
    np.testing.assert_array_equal(batch["document_mask"], rows[:4, 1:] != NO_ROW)
    np.testing.assert_array_equal(batch["document_ids"], filled)
    docs = tokenizer.batch(store.texts(filled.reshape(-1)))
    np.testing.assert_array_equal(batch["document_input_ids"].reshape(12, -1), docs["input_ids"])
    np.testing.assert_allclose(
        batch["teacher_documents"].reshape(12, -1), store.teacher_vectors(filled.reshape(-1)), atol=0
    )
    assert batch["row_mask"].all()


def test_last_partial_batch_is_masked(pairs_path, tokenizer):
    batches = list(make_pair_iterator(pairs_path, tokenizer, global_batch_size=4, mesh=None, num_epochs=1))
    assert len(batches) == 3 and batches[-1]["row_mask"].tolist() == [True, True, True, False]


def test_global_sharded_batches(pairs_path, tokenizer):
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    batch = next(make_pair_iterator(pairs_path, tokenizer, global_batch_size=8, mesh=mesh))
    local = next(make_pair_iterator(pairs_path, tokenizer, global_batch_size=8, mesh=None))
    for key, value in batch.items():
        assert isinstance(value, jax.Array) and value.sharding.spec[0] == ("data", "fsdp"), key
        np.testing.assert_array_equal(np.asarray(value), local[key], err_msg=key)


def test_host_slices_join_to_the_global_batch(pairs_path, tokenizer):
    whole = take(make_pair_iterator(pairs_path, tokenizer, global_batch_size=4, mesh=None, shuffle_seed=2), 4)
    hosts = [
        take(
            make_pair_iterator(
                pairs_path, tokenizer, global_batch_size=4, mesh=None, shuffle_seed=2, process_index=p, process_count=2
            ),
            4,
        )
        for p in range(2)
    ]
    for step in range(4):
        for key in whole[step]:
            joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(joined, whole[step][key], err_msg=key)


@pytest.mark.parametrize("resume_at", [0, 2, 5])
def test_exact_resume_from_state(pairs_path, tokenizer, resume_at):
    def fresh():
        return make_pair_iterator(pairs_path, tokenizer, global_batch_size=4, mesh=None, shuffle_seed=7)

    uninterrupted = take(fresh(), resume_at + 3)
    first = fresh()
    take(first, resume_at)
    state = json.loads(json.dumps(first.get_state()))
    take(first, 2)
    resumed = fresh()
    resumed.set_state(state)
    for got, want in zip(take(resumed, 3), uninterrupted[resume_at:]):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(ValueError, match="shuffle_seed"):
        make_pair_iterator(pairs_path, tokenizer, global_batch_size=4, mesh=None, shuffle_seed=8).set_state(state)
