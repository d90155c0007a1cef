"""Tiny random teacher models in the layouts of the paper's teachers, for the encoding tests.

- `stella_layout(folder, tokenizer)`: a sentence-transformers folder whose modules.json names `2_Dense_16`
  and that holds a further head `2_Dense_24` (old-style `pytorch_model.bin`, as stella_en_1.5B_v5 ships).
- `remote_code_model(folder, tokenizer)`: a Hugging Face folder whose model class lives in the folder's own
  modeling file, reached through `auto_map` (what trust_remote_code loads, as NV-Embed-v2 does).
The tokenizer is MiniLM's, with `[SEP]` declared as its eos_token (BERT's tokenizer has none).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
HIDDEN = 32


def copy_tokenizer(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = "[SEP]"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _dense(folder: Path, dim: int, seed: int, safetensors: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = {
        "linear.weight": torch.randn(dim, HIDDEN, generator=generator) * 0.3,
        "linear.bias": torch.randn(dim, generator=generator) * 0.1,
    }
    config = {"in_features": HIDDEN, "out_features": dim, "bias": True}
    config["activation_function"] = "torch.nn.modules.linear.Identity"
    (folder / "config.json").write_text(json.dumps(config))
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")


def stella_layout(folder: Path, tokenizer: Path, named: int = 16) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    copy_tokenizer(tokenizer, folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True})
    )
    _dense(folder / "2_Dense_16", 16, 1, safetensors=True)
    _dense(folder / "2_Dense_24", 24, 2, safetensors=False)
    name_modules(folder, named)
    return folder


def name_modules(folder: Path, dense: int) -> None:
    """modules.json naming `2_Dense_{dense}` as the model's Dense module."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": f"2_Dense_{dense}", "type": "sentence_transformers.models.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))


CONFIGURATION = textwrap.dedent(
    """
    from transformers import PretrainedConfig

    class TinyRemoteConfig(PretrainedConfig):
        model_type = "tiny-remote"

        def __init__(self, vocab_size=30522, hidden_size=16, **kwargs):
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            super().__init__(**kwargs)
    """
)

MODELING = textwrap.dedent(
    """
    import torch
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput

    from .configuration_tiny import TinyRemoteConfig

    class TinyRemoteModel(PreTrainedModel):
        config_class = TinyRemoteConfig

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            self.mix = torch.nn.Linear(config.hidden_size, config.hidden_size)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = torch.tanh(self.mix(self.embed(input_ids))) + 0.5  # not what any built-in class computes
            return BaseModelOutput(last_hidden_state=hidden)
    """
)


def remote_code_model(folder: Path, tokenizer: Path) -> Path:
    import importlib.util
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_tiny.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(MODELING.replace("from .configuration_tiny", "from configuration_tiny"))
    sys.path.insert(0, str(folder))
    try:
        for name in ("configuration_tiny", "modeling_tiny"):
            spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        torch.manual_seed(0)
        model = sys.modules["modeling_tiny"].TinyRemoteModel(sys.modules["configuration_tiny"].TinyRemoteConfig())
        model.save_pretrained(folder)
    finally:
        sys.path.remove(str(folder))
        for name in ("configuration_tiny", "modeling_tiny"):
            sys.modules.pop(name, None)
    (folder / "modeling_tiny.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny.TinyRemoteConfig",
        "AutoModel": "modeling_tiny.TinyRemoteModel",
    }
    config["architectures"] = ["TinyRemoteModel"]
    (folder / "config.json").write_text(json.dumps(config))
    copy_tokenizer(tokenizer, folder)
    return folder
