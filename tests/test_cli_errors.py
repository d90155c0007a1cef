"""A user error ends every sub-command with one line `jasper-jax COMMAND: message` and a non-zero code,
never a traceback, and nothing is written."""

import pytest

from jasper_jax import cli


def _commands(tmp_path):
    missing = str(tmp_path / "missing")
    texts = tmp_path / "texts.txt"
    texts.write_text("a text\n")
    return {
        "encode": ["encode", "--model", missing, "--input", str(texts), "--out", str(tmp_path / "out.npy")],
        "encode-input": ["encode", "--model", "minilm", "--input", missing, "--out", str(tmp_path / "out.npy")],
        "export": ["export", "--model", missing, "--out", str(tmp_path / "out")],
        "export-head": ["export", "--model", "minilm", "--head", "fc9", "--out", str(tmp_path / "out")],
        "eval": ["eval", "--model", missing, "--out", str(tmp_path / "out.json"), "--lee", missing, "--news", missing],
        "train": ["train", "--config", missing + ".py"],
        "train-override": ["train", "--config", "configs/tiny.py", "--config.stages.stage1.lrr=1"],
        "compile-check": ["compile-check", "--config", missing + ".py"],
        "pairs": ["pairs", "build", "--input", str(texts), "--store", missing, "--out", str(tmp_path / "pairs")],
        "pairs-mine": ["pairs", "mine", "--pairs", missing, "--out", str(tmp_path / "mined"), "--negatives", "2"],
        "teachers": [
            "teachers",
            "encode",
            "--corpus",
            str(texts),
            "--teacher",
            missing,
            "--out",
            str(tmp_path / "store"),
        ],
    }


@pytest.mark.parametrize(
    "case",
    [
        "encode",
        "encode-input",
        "export",
        "export-head",
        "eval",
        "train",
        "train-override",
        "compile-check",
        "teachers",
        "pairs",
        "pairs-mine",
    ],
)
def test_a_user_error_is_one_line_and_exit_code_2(case, tmp_path, capsys):
    argv = _commands(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(argv)
    error = capsys.readouterr().err.strip()
    assert code != 0 and error.startswith(f"jasper-jax {argv[0]}: "), (code, error)
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a refused command wrote files"
