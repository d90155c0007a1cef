"""Helpers of the convert tests: tiny random PyTorch Qwen2 / Qwen3 models saved as Hugging Face folders with a
Qwen2-style tokenizer, the bidirectional reference and sample texts."""

from pathlib import Path

import torch

TEXTS = [
    "A man is playing a guitar on a stage.",
    "Distillation trains a small student to reproduce the vectors of several large teachers.",
    "ok",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "Embeddings of different lengths, padded in one batch.",
]


def save_qwen2_tokenizer(folder: Path) -> int:
    """A small byte-level BPE tokenizer with Qwen2's exact pipeline (what transformers' Qwen2Tokenizer
    rebuilds from tokenizer.json), trained on a fixed text; returns its vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TEXTS * 20 + [text.upper() for text in TEXTS], trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "Qwen2Tokenizer", "pad_token": "<|endoftext|>", "eos_token": "<|endoftext|>", '
        '"unk_token": null, "bos_token": null, "model_max_length": 512}'
    )
    return tokenizer.get_vocab_size()


def save_random_qwen2(
    folder: Path, *, hidden=32, heads=4, kv_heads=2, layers=2, seed=0, family="qwen2", **extra
) -> torch.nn.Module:
    """A random Qwen2Model (`family="qwen3"`: Qwen3Model; `extra`: more config fields such as head_dim) with a
    Qwen2-style BPE tokenizer, saved to `folder`."""
    import transformers

    name = {"qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = save_qwen2_tokenizer(folder)
    torch.manual_seed(seed)
    config = getattr(transformers, f"{name}Config")(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
        **extra,
    )
    model = getattr(transformers, f"{name}Model")(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return model


def bidirectional_hidden(model, input_ids, attention_mask):
    """Reference: Qwen2Model with a padding-only 4D additive mask (STACK.md)."""
    ids = torch.tensor(input_ids).long()
    keep = torch.tensor(attention_mask)[:, None, None, :].float()
    length = ids.shape[1]
    additive = ((1.0 - keep) * torch.finfo(torch.float32).min).expand(-1, 1, length, length)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask={"full_attention": additive}).last_hidden_state.numpy()


def compressed_student(source: Path, *, causal: bool = True, threshold: int = 8, head_dim: int = 24, seed: int = 5):
    """(JasperStudent, StudentConfig) of the random Qwen3 folder `source` with a fresh random token compressor
    (MLP width 40, `threshold`, default ratio 0.5) and one fresh head `fc1` of `head_dim`."""
    import dataclasses

    from flax import nnx

    from jasper_jax.convert import load_model_folder
    from jasper_jax.models.params import assign_params, flat_params
    from jasper_jax.models.student import JasperStudent
    from jasper_jax.models.token_compression import CompressionConfig

    loaded = load_model_folder(source, heads={"fc1": head_dim}, rngs=nnx.Rngs(seed), causal=causal)
    config = dataclasses.replace(
        loaded.config, token_compression=CompressionConfig(intermediate_size=40, threshold=threshold)
    )
    model = JasperStudent(config, rngs=nnx.Rngs(seed + 1))
    assign_params(model, flat_params(loaded.model))
    return model, config


def compression_texts() -> list[str]:
    """Texts of about 2 to 60 tokens of the helpers' tokenizer: below and above a threshold of 8."""
    return [" ".join(TEXTS[i % len(TEXTS)] for i in range(k, k + reps)) for k, reps in enumerate([1, 3, 1, 6, 2, 1])]
