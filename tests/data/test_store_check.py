"""`check_store` / `teachers check`: every problem is reported with its file and row, the store is untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jasper_jax.cli import main
from jasper_jax.data.check import check_store
from tests.data.data_helpers import sample_texts, tree_hash


def checked(path, *args, **kwargs) -> list[str]:
    """check_store, asserting the store is byte-identical afterwards."""
    before = tree_hash(path)
    problems = check_store(path, *args, **kwargs)
    assert tree_hash(path) == before, "check_store modified the store"
    return problems


def edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_clean_store_has_no_problems(make_store):
    path = make_store(sample_texts(10))
    assert checked(path) == []
    assert checked(path, ["a", "b"]) == []
    assert checked(path, [{"name": "a", "dim": 8}, {"name": "b", "dim": 4}]) == []


@pytest.mark.parametrize("written, declared", [("float32", "float16"), ("float16", "float32")])
def test_float16_float32_mixup_is_named(make_store, written, declared):
    path = make_store(sample_texts(10), dtype=written)
    edit_manifest(path, lambda m: m["teachers"][1].update(dtype=declared))
    problems = checked(path)
    assert len(problems) == 1, problems  # said once for the teacher's 3 shard files
    problem = problems[0]
    assert "b/00000.bin" in problem and "2 more file(s) of teacher 'b'" in problem
    assert "float16/float32 mix-up" in problem and f"the writer wrote {written}" in problem
    assert f'"dtype": "{written}"' in problem  # what to do


def test_texts_with_an_extra_row_are_misaligned(make_store):
    path = make_store(sample_texts(10))
    with open(path / "texts.jsonl", "a") as handle:
        handle.write(json.dumps({"text": "one more"}) + "\n")
    problems = checked(path)
    assert any("texts.jsonl: 11 texts but the manifest says 10 rows" in p and "misaligned" in p for p in problems)
    assert any("texts.index.npy" in p and "changed after the store was written" in p for p in problems)


def test_vector_file_missing_a_row_is_reported(make_store):
    path = make_store(sample_texts(10), dtype="float32")
    shard = path / "a" / "00001.bin"
    shard.write_bytes(shard.read_bytes()[: 3 * 8 * 4])  # 3 of its 4 rows
    edit_before = tree_hash(path)
    problems = checked(path)
    assert tree_hash(path) == edit_before
    assert any("a/00001.bin" in p and "holds 3 rows of 8 float32" in p and "misaligned" in p for p in problems), (
        problems
    )


def test_manifest_rows_disagree_with_teacher_rows(make_store):
    path = make_store(sample_texts(10))
    edit_manifest(path, lambda m: m["teachers"][0]["shards"].pop())
    problems = checked(path)
    assert any("teacher 'a' has 8 rows of vectors but the store has 10 texts" in p for p in problems), problems


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "Inf"), (0.0, "all-zero")])
def test_bad_vector_rows_are_named(make_store, value, word):
    path = make_store(sample_texts(10), dtype="float32", shard_rows=4)
    file = path / "b" / "00001.bin"
    data = np.fromfile(file, dtype=np.float32).reshape(4, 4)
    if word == "all-zero":
        data[2] = 0.0
    else:
        data[2, 1] = value
    data.tofile(file)
    problems = checked(path, verify_checksums=False)
    assert len(problems) == 1, problems
    assert "b/00001.bin" in problems[0] and f"{word} vectors in store row(s) 6 " in problems[0]
    assert "re-encode" in problems[0]
    # with checksums on, the change is also reported as a modified file
    assert any("sha256 differs" in p for p in checked(path))


def test_empty_text_is_named(make_store):
    texts = sample_texts(6)
    texts[4] = "   "
    problems = checked(make_store(texts))
    assert len(problems) == 1 and "empty text in row(s) 4." in problems[0] and "drop it" in problems[0]


def test_undecodable_text_is_named(make_store):
    path = make_store(["first", "second text", "third"])
    data = (path / "texts.jsonl").read_bytes()
    start = data.index(b"second")
    (path / "texts.jsonl").write_bytes(data[:start] + b"\xff\xfe" + data[start + 2 :])  # same length, bad UTF-8
    problems = checked(path)
    assert any("undecodable text in row(s) 1 " in p and "UnicodeDecodeError" in p for p in problems), problems


def test_teachers_other_than_expected(make_store):
    path = make_store(sample_texts(5))
    problems = checked(path, ["a", "nv_embed"])
    assert len(problems) == 1 and "expects [('a', None), ('nv_embed', None)]" in problems[0]
    assert "store's teachers are [('a', 8), ('b', 4)]" in problems[0]
    assert "dim" not in checked(path, [{"name": "a", "dim": 8}, {"name": "b", "dim": 4}])
    assert len(checked(path, [{"name": "a", "dim": 8}, {"name": "b", "dim": 768}])) == 1


def test_not_a_store_and_unfinished_store(tmp_path, make_store):
    assert "not a teacher store" in check_store(tmp_path)[0]
    path = make_store(sample_texts(5))
    edit_manifest(path, lambda m: m.update(complete=False))
    assert any("unfinished" in p for p in checked(path))


def test_cli_check_exit_codes_and_messages(make_store, capsys):
    path = make_store(sample_texts(8), dtype="float32")
    assert main(["teachers", "check", str(path), "--expect-teachers", "a,b"]) == 0
    assert "ok" in capsys.readouterr().out
    edit_manifest(path, lambda m: m["teachers"][0].update(dtype="float16"))
    before = tree_hash(path)
    assert main(["teachers", "check", str(path)]) == 1
    assert tree_hash(path) == before
    err = capsys.readouterr().err
    assert "float16/float32 mix-up" in err and "a/00000.bin" in err and "the store was not modified" in err
