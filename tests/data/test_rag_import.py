"""`teachers import-rag`: the official float32 memmap + text.jsonl into a store, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jasper_jax.cli import main
from jasper_jax.data.rag_import import import_rag
from jasper_jax.data.store import TeacherStore
from tests.data.data_helpers import sample_texts, tree_hash


def write_official(folder, rows=11, dims=(4, 8), dtype=np.float32, extra_texts=0, seed=0):
    """The official layout: raw (N, D) memmap of the teachers side by side, and {"query": ...} per line."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, sum(dims))).astype(np.float32)
    memmap = np.memmap(folder / "train.npy", dtype=dtype, mode="w+", shape=vectors.shape)
    memmap[:] = vectors
    memmap.flush()
    texts = sample_texts(rows + extra_texts)
    (folder / "train.text.jsonl").write_text("".join(json.dumps({"query": t}) + "\n" for t in texts))
    return vectors, texts


def normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_import_roundtrip_two_teachers(tmp_path):
    vectors, texts = write_official(tmp_path)
    import_rag(
        tmp_path / "train.npy",
        tmp_path / "train.text.jsonl",
        12,
        tmp_path / "store",
        teacher_dims=[4, 8],
        names=["nv", "stella"],
        shard_rows=4,
    )
    store = TeacherStore(tmp_path / "store")
    assert len(store) == 11 and store.teacher_names == ["nv", "stella"] and store.dim == 12
    assert store.texts(range(11)) == texts
    expected = normalise(np.concatenate([normalise(vectors[:, :4]), normalise(vectors[:, 4:])], axis=1))
    np.testing.assert_allclose(store.teacher_vectors(np.arange(11)), expected, atol=1e-6)
    # float32 copy is exact: the shards are the official columns, bit for bit
    stella = np.concatenate([np.fromfile(tmp_path / "store" / "stella" / f"{k:05d}.bin", np.float32) for k in range(3)])
    np.testing.assert_array_equal(stella.reshape(11, 8), vectors[:, 4:])
    np.testing.assert_allclose(
        TeacherStore(tmp_path / "store", ["nv"]).teacher_vectors(range(11)), normalise(vectors[:, :4]), atol=1e-6
    )


def test_import_float16_file_read_as_float32_is_named_and_nothing_written(tmp_path):
    write_official(tmp_path, dtype=np.float16)
    before = tree_hash(tmp_path)
    with pytest.raises(ValueError, match=r"the file is float16, not float32 \(the float16/float32 mix-up") as error:
        import_rag(tmp_path / "train.npy", tmp_path / "train.text.jsonl", 12, tmp_path / "store")
    assert "--source-dtype float16" in str(error.value) and "Nothing was written" in str(error.value)
    assert not (tmp_path / "store").exists() and tree_hash(tmp_path) == before
    import_rag(tmp_path / "train.npy", tmp_path / "train.text.jsonl", 12, tmp_path / "store", source_dtype="float16")
    assert len(TeacherStore(tmp_path / "store")) == 11


def test_import_refuses_misaligned_texts(tmp_path):
    write_official(tmp_path, extra_texts=1)
    with pytest.raises(
        ValueError, match="holds 11 rows of 12 float32 but the texts file has 12 rows: texts and vectors"
    ):
        import_rag(tmp_path / "train.npy", tmp_path / "train.text.jsonl", 12, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_import_refuses_wrong_dim_and_bad_lines(tmp_path):
    write_official(tmp_path)
    with pytest.raises(ValueError, match="check --dim"):
        import_rag(tmp_path / "train.npy", tmp_path / "train.text.jsonl", 13, tmp_path / "store")
    with pytest.raises(ValueError, match="sum to 11, not --dim 12"):
        import_rag(tmp_path / "train.npy", tmp_path / "train.text.jsonl", 12, tmp_path / "s", teacher_dims=[4, 7])
    (tmp_path / "bad.jsonl").write_bytes(b'{"query": "ok"}\n{"query": "\xff"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: undecodable line"):
        import_rag(tmp_path / "train.npy", tmp_path / "bad.jsonl", 12, tmp_path / "store")


def test_cli_import_then_check_flags_nan_rows(tmp_path, capsys):
    vectors, _ = write_official(tmp_path)
    memmap = np.memmap(tmp_path / "train.npy", dtype=np.float32, mode="r+", shape=vectors.shape)
    memmap[7, 9] = np.nan
    memmap.flush()
    code = main(
        [
            "teachers",
            "import-rag",
            "--vectors",
            str(tmp_path / "train.npy"),
            "--texts",
            str(tmp_path / "train.text.jsonl"),
            "--dim",
            "12",
            "--teacher-dims",
            "4,8",
            "--names",
            "nv,stella",
            "--out",
            str(tmp_path / "store"),
            "--shard-rows",
            "4",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "stella/00001.bin" in err and "NaN vectors in store row(s) 7 " in err
    assert (
        main(
            [
                "teachers",
                "import-rag",
                "--vectors",
                str(tmp_path / "train.npy"),
                "--texts",
                str(tmp_path / "train.text.jsonl"),
                "--dim",
                "12",
                "--out",
                str(tmp_path / "store"),
            ]
        )
        == 1
    )
    assert "already holds a store" in capsys.readouterr().err


def test_wrap_reads_the_official_file_in_place(tmp_path):
    from jasper_jax.data.check import check_store
    from tests.data.data_helpers import tree_hash as hashes

    vectors, texts = write_official(tmp_path)
    official = hashes(tmp_path)
    import_rag(
        tmp_path / "train.npy",
        tmp_path / "train.text.jsonl",
        12,
        tmp_path / "copy",
        teacher_dims=[4, 8],
        names=["nv", "stella"],
        shard_rows=4,
    )
    assert (
        main(
            [
                "teachers",
                "import-rag",
                "--vectors",
                str(tmp_path / "train.npy"),
                "--texts",
                str(tmp_path / "train.text.jsonl"),
                "--dim",
                "12",
                "--teacher-dims",
                "4,8",
                "--names",
                "nv,stella",
                "--out",
                str(tmp_path / "wrapped"),
                "--wrap",
            ]
        )
        == 0
    )
    assert not list((tmp_path / "wrapped").rglob("*.bin")), "wrap must not copy the vectors"
    copied, wrapped = TeacherStore(tmp_path / "copy"), TeacherStore(tmp_path / "wrapped")
    rows = np.array([10, 0, 3, 4, 5, 9])
    np.testing.assert_array_equal(wrapped.teacher_vectors(rows), copied.teacher_vectors(rows))
    np.testing.assert_array_equal(
        TeacherStore(tmp_path / "wrapped", ["stella"]).teacher_vectors(rows),
        TeacherStore(tmp_path / "copy", ["stella"]).teacher_vectors(rows),
    )
    assert wrapped.texts(list(rows)) == [texts[i] for i in rows]
    assert check_store(tmp_path / "wrapped", ["nv", "stella"]) == []
    assert hashes(tmp_path)["train.npy"] == official["train.npy"], "reading and checking left the file as it was"
    # a NaN in the official file's stella columns is found in the wrapped store, for stella only, at its row
    memmap = np.memmap(tmp_path / "train.npy", dtype=np.float32, mode="r+", shape=vectors.shape)
    memmap[6, 7] = np.nan
    memmap.flush()
    problems = check_store(tmp_path / "wrapped")
    assert len(problems) == 1 and "teacher 'stella' has NaN vectors in store row(s) 6 " in problems[0]
    (tmp_path / "train.npy").rename(tmp_path / "moved.npy")
    assert any("train.npy: missing" in p for p in check_store(tmp_path / "wrapped"))
