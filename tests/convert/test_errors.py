"""Bad input: wrong weights name their keys, unsupported architectures name their model_type, no tokenizer."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jasper_jax.convert import ConversionError, load_model, load_model_folder
from jasper_jax.convert.export import export_model
from jasper_jax.encode import encode_texts


@pytest.fixture(scope="module")
def minilm_tensors(minilm_folder):
    return load_file(str(minilm_folder / "model.safetensors"))


@pytest.fixture(scope="module")
def minilm_config(minilm_folder):
    return json.loads((minilm_folder / "config.json").read_text())


def hf_folder(tmp_path: Path, tensors: dict, config: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, minilm_tensors, minilm_config):
    tensors = dict(minilm_tensors)
    del tensors["encoder.layer.3.attention.self.key.weight"]
    tensors["encoder.layer.0.attention.self.extra.weight"] = np.zeros((2, 2), np.float32)
    tensors["encoder.layer.5.output.dense.bias"] = np.zeros((7,), np.float32)
    with pytest.raises(ConversionError) as error:
        load_model(hf_folder(tmp_path, tensors, minilm_config))
    message = str(error.value)
    assert "missing keys (1): encoder.layer.3.attention.self.key.weight" in message
    assert "unexpected keys (1): encoder.layer.0.attention.self.extra.weight" in message
    assert "encoder.layer.5.output.dense.bias: shape (7,)" in message


def test_prefixed_checkpoint_and_known_extras_load(tmp_path, minilm_tensors, minilm_config):
    """`bert.`-prefixed keys (BertForX checkpoints) load; pooler / position_ids buffers are skipped."""
    tensors = {f"bert.{key}": value for key, value in minilm_tensors.items()}
    tensors["cls.predictions.bias"] = np.zeros((3,), np.float32)
    model, _ = load_model(hf_folder(tmp_path, tensors, minilm_config))
    np.testing.assert_array_equal(
        model.encoder.word_embeddings.embedding[...], minilm_tensors["embeddings.word_embeddings.weight"]
    )


def test_sharded_checkpoint_loads(tmp_path, minilm_tensors, minilm_folder):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copyfile(minilm_folder / "config.json", folder / "config.json")
    keys = sorted(minilm_tensors)
    weight_map = {}
    for number, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"model-0000{number + 1}-of-00002.safetensors"
        save_file({key: minilm_tensors[key] for key in part}, str(folder / name))
        weight_map.update({key: name for key in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, _ = load_model(folder)
    np.testing.assert_array_equal(
        model.encoder.layers[5].mlp_norm.bias[...], minilm_tensors["encoder.layer.5.output.LayerNorm.bias"]
    )


def test_unsupported_architecture_names_model_type(tmp_path, minilm_tensors, minilm_config):
    config = dict(minilm_config)
    config["model_type"] = "t5"
    with pytest.raises(
        ConversionError, match=r"unsupported model_type 't5'; supported model types: bert, mpnet, qwen2"
    ):
        load_model(hf_folder(tmp_path, dict(minilm_tensors), config))


def test_unsupported_sentence_transformers_module_is_named(tmp_path):
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_LSTM", "type": "sentence_transformers.models.LSTM"},
            ]
        )
    )
    with pytest.raises(ConversionError, match="LSTM"):
        load_model(folder)


def test_missing_folder_and_weights(tmp_path, minilm_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copyfile(minilm_folder / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(folder)


def test_no_tokenizer_is_a_clear_error(tmp_path, minilm_tensors, minilm_config):
    folder = hf_folder(tmp_path, dict(minilm_tensors), minilm_config)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        encode_texts(folder, ["hello"], progress=False)
    loaded = load_model_folder(folder)
    with pytest.raises(FileNotFoundError, match="no tokenizer to export"):
        export_model(loaded.model, loaded.config, folder, tmp_path / "out")


def test_unknown_head_lists_the_heads(minilm_folder):
    loaded = load_model_folder(minilm_folder, heads={"fc1": 8})
    with pytest.raises(ValueError, match="unknown head 'fc9'; this model has: fc1, pooled"):
        encode_texts(loaded, ["hello"], head="fc9", progress=False)


def test_unsupported_pooling_is_named(tmp_path):
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ConversionError, match="pooling mode 'max' is not supported"):
        load_model(folder)
