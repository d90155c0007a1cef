"""`jasper_jax.loader`: the `minilm` alias works in `encode` and `export`, and bad names say what to pass."""

import json

import numpy as np
import pytest

from jasper_jax import cli
from jasper_jax.convert.hf import ModelNotFoundError
from jasper_jax.encode import encode_texts
from jasper_jax.errors import UserError
from jasper_jax.loader import MODEL_ALIASES, load_any, resolve_model_path, tokenizer_from_training_config

TEXTS = ["a student learns from its teachers", "vectors of every length", "x"]


def test_alias_resolves_to_the_offline_kit_folder_and_paths_pass_through(tmp_path, minilm_folder):
    assert resolve_model_path("minilm") == minilm_folder
    assert resolve_model_path(tmp_path) == tmp_path
    assert resolve_model_path(str(tmp_path)) == tmp_path
    assert set(MODEL_ALIASES) == {"minilm"}


def test_unknown_name_is_a_user_error_naming_it_and_the_aliases(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model_path("minlm")
    assert isinstance(error.value, UserError) and isinstance(error.value, FileNotFoundError)
    assert error.value.exit_code == 2
    message = str(error.value)
    assert "'minlm' does not exist" in message and "did you mean the alias 'minilm'" in message, message
    with pytest.raises(ModelNotFoundError, match="nowhere' does not exist and is not a model alias"):
        load_any(tmp_path / "nowhere")


def test_a_folder_that_is_neither_model_nor_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model folder .* nor a training checkpoint"):
        load_any(tmp_path / "empty")


def test_training_config_naming_the_alias_gives_its_tokenizer(tmp_path, minilm_folder):
    assert tokenizer_from_training_config({"model": {"source": "minilm"}}) == minilm_folder
    assert tokenizer_from_training_config({"model": {"source": "random"}, "workdir": str(tmp_path)}) is None


def test_encode_command_takes_the_alias(tmp_path, minilm_folder):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vectors.npy"
    code = cli.main(["encode", "--model", "minilm", "--input", str(texts), "--out", str(out), "--no-progress"])
    assert code == 0
    expected = encode_texts(minilm_folder, TEXTS, progress=False)
    np.testing.assert_array_equal(np.load(out), expected)


def test_export_command_takes_the_alias(tmp_path):
    out = tmp_path / "export"
    assert cli.main(["export", "--model", "minilm", "--out", str(out)]) == 0
    assert [m["path"] for m in json.loads((out / "modules.json").read_text())] == ["", "1_Pooling", "2_Normalize"]
    np.testing.assert_allclose(
        encode_texts(out, TEXTS, progress=False), encode_texts("minilm", TEXTS, progress=False), atol=1e-6
    )
