"""`teachers encode --preflight N`: speed report, finite / non-degenerate checks, cosine to a reference."""

from __future__ import annotations

import json

import numpy as np

from jasper_jax.cli import main
from jasper_jax.data.preflight import preflight
from jasper_jax.data.teacher_encoding import EncodeSettings, TeacherSpec
from tests.data.data_helpers import fake_factory, fake_vectors, sample_texts

TEXTS = sample_texts(20)
SPECS = [TeacherSpec("a", "/fake/a")]


def test_a_good_teacher_passes_and_the_projection_is_printed(tmp_path, capsys):
    reference = tmp_path / "reference.npz"
    np.savez(reference, texts=np.asarray(TEXTS[:6]), vectors=fake_vectors(TEXTS[:6], 8, "a"))
    code = preflight(
        TEXTS, SPECS, EncodeSettings(batch_size=4), 6, reference=str(reference), encoder_factory=fake_factory({"a": 8})
    )
    out = capsys.readouterr().out
    assert code == 0 and "texts/s on 6 texts, dim 8" in out and "20 texts would take" in out
    assert "cosine to the reference >= 1.0000" in out or "cosine to the reference >= 0.9999" in out


def test_collapsed_nonfinite_and_off_reference_vectors_fail(tmp_path, capsys):
    def collapsed(spec):
        return lambda texts: np.ones((len(texts), 8), np.float32) + 1e-4 * fake_vectors(texts, 8)

    assert preflight(TEXTS, SPECS, EncodeSettings(), 5, encoder_factory=collapsed) == 1
    assert "collapsed" in capsys.readouterr().err

    def nan(spec):
        return lambda texts: np.full((len(texts), 8), np.nan, np.float32)

    assert preflight(TEXTS, SPECS, EncodeSettings(), 5, encoder_factory=nan) == 1
    assert "non-finite vectors for text(s) [0, 1, 2, 3, 4]" in capsys.readouterr().err
    reference = tmp_path / "reference.npz"
    np.savez(reference, texts=np.asarray(TEXTS[:4]), vectors=fake_vectors(TEXTS[:4], 8, "other"))
    assert (
        preflight(TEXTS, SPECS, EncodeSettings(), 4, reference=str(reference), encoder_factory=fake_factory({"a": 8}))
        == 1
    )
    assert "cosine to the reference below 0.999 for 4 of 4 texts" in capsys.readouterr().err


def test_cli_preflight_writes_nothing(tmp_path, minilm_folder, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    out = tmp_path / "store"
    argv = ["teachers", "encode", "--corpus", str(corpus), "--teacher", str(minilm_folder), "--out", str(out)]
    assert main(argv + ["--preflight", "8", "--backend", "torch"]) == 0
    assert "preflight: all teachers, 20 texts" in capsys.readouterr().out
    assert not out.exists()
