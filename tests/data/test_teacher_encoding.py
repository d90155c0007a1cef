"""Teacher encoding into a store: manifest, vectors, resume after a crash or a SIGKILL, refusal to mix runs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jasper_jax.data import store as store_lib
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store, read_corpus, specs_from_arguments
from tests.data.data_helpers import fake_factory, fake_vectors, finished_shards, sample_texts, tree_hash

REPO = Path(__file__).resolve().parents[2]


def normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_manifest_records_teachers_rows_and_checksums(make_store):
    texts = sample_texts(10)
    path = make_store(texts, dims={"a": 8, "b": 4}, shard_rows=4, prompts={"b": "query: "})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["rows"] == 10 and manifest["complete"] is True and manifest["shard_rows"] == 4
    assert manifest["texts"]["sha256"] == store_lib.sha256_file(path / "texts.jsonl")
    teachers = {t["name"]: t for t in manifest["teachers"]}
    assert [t["name"] for t in manifest["teachers"]] == ["a", "b"]
    assert (teachers["a"]["dim"], teachers["b"]["dim"]) == (8, 4)
    assert teachers["b"]["prompt"] == "query: " and teachers["a"]["path"] == "/fake/a"
    assert all(t["dtype"] == "float16" and t["normalisation"] == "l2" for t in teachers.values())
    for teacher in teachers.values():
        assert [s["rows"] for s in teacher["shards"]] == [4, 4, 2]
        for shard in teacher["shards"]:
            file = path / shard["file"]
            assert file.stat().st_size == shard["rows"] * teacher["dim"] * 2  # float16, no header
            assert store_lib.sha256_file(file) == shard["sha256"]


def test_store_rows_are_normalised_concatenated_renormalised(make_store):
    texts = sample_texts(11)
    path = make_store(texts, dims={"a": 8, "b": 4}, shard_rows=3, dtype="float32", prompts={"b": "q: "})
    store = TeacherStore(path)
    a = normalise(fake_vectors(texts, 8, "a"))
    b = normalise(fake_vectors(["q: " + t for t in texts], 4, "b"))
    expected = normalise(np.concatenate([a, b], axis=1))
    assert len(store) == 11 and store.dim == 12
    for i in range(11):
        row = store[i]
        assert row["text"] == texts[i]
        np.testing.assert_allclose(row["teacher"], expected[i], atol=1e-6)
        assert row["teacher"].dtype == np.float32
    order = np.array([10, 0, 5, 5, 3, 9])  # across shards, repeated, unordered
    np.testing.assert_allclose(store.teacher_vectors(order), expected[order], atol=1e-6)
    np.testing.assert_allclose(TeacherStore(path, teachers=["b"]).teacher_vectors(order), b[order], atol=1e-6)
    assert store.texts([3, 1]) == [texts[3], texts[1]]


def test_float16_store_is_close_to_float32(make_store):
    texts = sample_texts(9)
    half = TeacherStore(make_store(texts, name="half"))
    full = TeacherStore(make_store(texts, name="full", dtype="float32"))
    rows = np.arange(9)
    np.testing.assert_allclose(half.teacher_vectors(rows), full.teacher_vectors(rows), atol=2e-3)
    assert not np.array_equal(half.teacher_vectors(rows), full.teacher_vectors(rows))


class Crash(RuntimeError):
    pass


def crashing_factory(dims, crash_after_calls):
    calls = {"n": 0}
    base = fake_factory(dims)

    def factory(spec):
        encoder = base(spec)

        def encode(texts):
            calls["n"] += 1
            if calls["n"] > crash_after_calls:
                raise Crash(f"killed after {crash_after_calls} shards")
            return encoder(texts)

        return encode

    return factory, calls


@pytest.mark.parametrize("crash_after", [0, 2, 3, 5])  # 3 shards per teacher: 3 = teacher b not begun
def test_resume_after_crash_gives_identical_store(tmp_path, crash_after):
    texts = sample_texts(10)
    dims = {"a": 8, "b": 4}
    specs = [TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b", "p: ")]
    encode_store(texts, tmp_path / "whole", specs, shard_rows=4, encoder_factory=fake_factory(dims), progress=False)
    factory, _ = crashing_factory(dims, crash_after)
    with pytest.raises(Crash):
        encode_store(texts, tmp_path / "resumed", specs, shard_rows=4, encoder_factory=factory, progress=False)
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert partial["complete"] is False
    assert finished_shards(tmp_path / "resumed") == crash_after
    counting, calls = crashing_factory(dims, 10**9)
    encode_store(texts, tmp_path / "resumed", specs, shard_rows=4, encoder_factory=counting, progress=False)
    assert calls["n"] == 6 - crash_after, "finished shards must not be encoded again"
    assert tree_hash(tmp_path / "resumed") == tree_hash(tmp_path / "whole")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tests.data.data_helpers import fake_factory, sample_texts
    from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store
    base = fake_factory({"a": 8, "b": 4})
    def slow(spec):
        encoder = base(spec)
        def encode(texts):
            time.sleep(0.05 if spec.name == "a" else 0.4)  # the kill lands while teacher b runs
            return encoder(texts)
        return encode
    encode_store(sample_texts(40), sys.argv[1], [TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b")],
                 shard_rows=4, encoder_factory=slow, progress=False)
    """
)


def test_sigkill_mid_encoding_then_resume_gives_identical_store(tmp_path):
    texts = sample_texts(40)
    specs = [TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b")]
    encode_store(
        texts, tmp_path / "whole", specs, shard_rows=4, encoder_factory=fake_factory({"a": 8, "b": 4}), progress=False
    )
    script = tmp_path / "encode.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    recorded = 0
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        recorded = finished_shards(out)
        if recorded >= 13:  # teacher a done (10 shards), teacher b part-way
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the encoder finished before it could be killed"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and 13 <= finished_shards(out) < 20
    encode_store(texts, out, specs, shard_rows=4, encoder_factory=fake_factory({"a": 8, "b": 4}), progress=False)
    assert tree_hash(out) == tree_hash(tmp_path / "whole")


def test_resume_refuses_other_corpus_or_teachers(make_store):
    texts = sample_texts(6)
    path = make_store(texts)
    before = tree_hash(path)
    specs = [TeacherSpec("a", "/fake/a"), TeacherSpec("b", "/fake/b")]
    factory = fake_factory({"a": 8, "b": 4})
    with pytest.raises(ValueError, match="texts .* differ from the corpus"):
        encode_store(texts[:-1] + ["other"], path, specs, shard_rows=4, encoder_factory=factory, progress=False)
    with pytest.raises(ValueError, match="teachers"):
        encode_store(texts, path, specs[:1], shard_rows=4, encoder_factory=factory, progress=False)
    with pytest.raises(ValueError, match="--shard-rows 4"):
        encode_store(texts, path, specs, shard_rows=5, encoder_factory=factory, progress=False)
    assert tree_hash(path) == before


def test_unfinished_store_is_refused_by_the_reader(tmp_path):
    factory, _ = crashing_factory({"a": 8}, 1)
    with pytest.raises(Crash):
        encode_store(
            sample_texts(9),
            tmp_path / "s",
            [TeacherSpec("a", "/fake/a")],
            shard_rows=4,
            encoder_factory=factory,
            progress=False,
        )
    with pytest.raises(ValueError, match="unfinished store"):
        TeacherStore(tmp_path / "s")


def test_specs_from_arguments_names_prompts_and_counts():
    specs = specs_from_arguments(["/m/minilm", "/m/minilm/"], None, ["s2p_query", ""], None)
    assert [s.name for s in specs] == ["minilm", "minilm_2"]
    assert specs[0].prompt.startswith("Instruct: Given a web search query") and specs[1].prompt == ""
    assert [s.backend for s in specs_from_arguments(["/a", "/b"], None, None, ["jax"])] == ["jax", "jax"]
    with pytest.raises(ValueError, match="--prompt given 3 times for 2 teachers"):
        specs_from_arguments(["/a", "/b"], None, ["x", "y", "z"], None)


def test_read_corpus_formats(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "a b"}\n{"text": "c"}\n')
    (tmp_path / "q.jsonl").write_text('{"query": "q1"}\n')
    (tmp_path / "c.txt").write_text("line one\nline two\n")
    assert read_corpus(tmp_path / "c.jsonl") == ["a b", "c"]
    assert read_corpus(tmp_path / "q.jsonl") == ["q1"]
    assert read_corpus(tmp_path / "c.txt") == ["line one", "line two"]


def test_cli_encode_with_sentence_transformers_minilm_twice(tmp_path, minilm_folder):
    """The PyTorch path end to end: two teachers (MiniLM with and without a prompt), float32 store."""
    from sentence_transformers import SentenceTransformer

    from jasper_jax.cli import main

    texts = [
        "A man is playing a guitar.",
        "The cat sits on the mat.",
        "Stocks fell sharply today.",
        "Quantum computers use qubits.",
        "Il pleut à Paris.",
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "store"
    minilm = str(minilm_folder)
    code = main(
        [
            "teachers",
            "encode",
            "--corpus",
            str(corpus),
            "--teacher",
            minilm,
            "--teacher",
            minilm,
            "--name",
            "plain",
            "--name",
            "prompted",
            "--prompt",
            "",
            "--prompt",
            "query: ",
            "--out",
            str(out),
            "--dtype",
            "float32",
            "--shard-rows",
            "2",
            "--no-progress",
            "--backend",
            "torch",
        ]
    )
    assert code == 0
    model = SentenceTransformer(minilm, device="cpu")
    plain = normalise(model.encode(texts))
    prompted = normalise(model.encode(["query: " + t for t in texts]))
    store = TeacherStore(out)
    assert store.teacher_names == ["plain", "prompted"] and store.dim == 768
    np.testing.assert_allclose(TeacherStore(out, ["plain"]).teacher_vectors(range(5)), plain, atol=1e-5)
    np.testing.assert_allclose(TeacherStore(out, ["prompted"]).teacher_vectors(range(5)), prompted, atol=1e-5)
    assert np.abs(plain - prompted).max() > 1e-3, "the prompt must change the vectors"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["backend"] for t in manifest["teachers"]] == ["torch", "torch"]
    assert hashlib.sha256((out / "texts.jsonl").read_bytes()).hexdigest() == manifest["texts"]["sha256"]


def test_jax_path_matches_sentence_transformers(tmp_path, minilm_folder):
    """The JAX path (jasper_jax.encode.encode_texts, the encoders issue) against sentence-transformers."""
    pytest.importorskip("jasper_jax.encode")
    from sentence_transformers import SentenceTransformer

    texts = ["A man is playing a guitar.", "The cat sits on the mat.", "Stocks fell sharply today."]
    specs = [TeacherSpec("minilm", str(minilm_folder), backend="jax")]
    encode_store(texts, tmp_path / "store", specs, dtype="float32", shard_rows=2, progress=False)
    expected = normalise(SentenceTransformer(str(minilm_folder), device="cpu").encode(texts))
    np.testing.assert_allclose(TeacherStore(tmp_path / "store").teacher_vectors(range(3)), expected, atol=1e-4)


def test_cli_encode_refuses_empty_texts_before_encoding(tmp_path, capsys):
    from jasper_jax.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a text\n\nanother\n  \n")
    code = main(["teachers", "encode", "--corpus", str(corpus), "--teacher", "/nowhere", "--out", str(tmp_path / "s")])
    assert code == 1 and not (tmp_path / "s").exists()
    assert "empty text in row(s) 1, 3 (0-based)" in capsys.readouterr().err
