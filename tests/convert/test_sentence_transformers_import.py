"""Sentence-transformers folders: Stella's layout (several 2_Dense_{d} heads, one named in modules.json)."""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from jasper_jax.convert import load_model_folder
from jasper_jax.data.tokenization import load_tokenizer
from tests.convert.convert_helpers import TEXTS, bidirectional_hidden

DIMS = (24, 40, 8)


def make_stella_layout(folder: Path, hidden: int) -> dict[int, torch.nn.Linear]:
    """modules.json: Transformer, Pooling (old flag format), 2_Dense_24; further 2_Dense_{d} folders beside it."""
    torch.manual_seed(5)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense_24", "type": "sentence_transformers.models.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    linears = {}
    for number, dim in enumerate(DIMS):
        dense = folder / f"2_Dense_{dim}"
        dense.mkdir()
        (dense / "config.json").write_text(
            json.dumps(
                {
                    "in_features": hidden,
                    "out_features": dim,
                    "bias": True,
                    "activation_function": "torch.nn.modules.linear.Identity",
                }
            )
        )
        linear = torch.nn.Linear(hidden, dim)
        state = {"linear.weight": linear.weight.detach(), "linear.bias": linear.bias.detach()}
        if number == 1:  # Stella's own files are pytorch_model.bin
            torch.save(state, dense / "pytorch_model.bin")
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, dense / "model.safetensors")
        linears[dim] = linear
    return linears


def test_every_stella_head_matches_pytorch(qwen2_folder, tmp_path):
    source, reference = qwen2_folder
    folder = tmp_path / "stella"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    linears = make_stella_layout(folder, hidden=32)
    loaded = load_model_folder(folder)
    assert list(loaded.config.heads) == ["dense_24", "dense_8", "dense_40"]
    assert loaded.default_head == "dense_24" and loaded.max_seq_length == 64 and loaded.config.pooling == "mean"
    batch = load_tokenizer(folder, 64).batch(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ours = {name: np.asarray(vector) for name, vector in loaded.model(ids, mask).items()}
    hidden = bidirectional_hidden(reference, ids, mask)
    pooled = torch.tensor((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True), dtype=torch.float32)
    for dim, linear in linears.items():
        with torch.no_grad():
            expected = torch.nn.functional.normalize(linear(pooled), dim=-1).numpy()
        error = np.abs(ours[f"dense_{dim}"] - expected).max()
        assert error < 1e-5, f"head dense_{dim}: max error {error}"


def test_sentence_transformers_dense_module_reads_the_same_weights(qwen2_folder, tmp_path):
    """The folder we read is one sentence-transformers itself loads: its Dense gives our head's kernel."""
    from sentence_transformers.sentence_transformer.modules import Dense

    source, _ = qwen2_folder
    folder = tmp_path / "stella"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    make_stella_layout(folder, hidden=32)
    loaded = load_model_folder(folder)
    dense = Dense.load(str(folder), subfolder="2_Dense_8")
    np.testing.assert_array_equal(loaded.model.heads["dense_8"].kernel[...], dense.linear.weight.detach().numpy().T)
