"""Token compression against PyTorch: the pooling equals `torch.nn.functional.adaptive_avg_pool1d` per row
(every length pair up to 40, incl. lengths that do not divide; exact copies below the threshold), and a
student loaded from the released Jasper-Token-Compression layout (`JasperV2Encoder`: `model.*`,
`jasper_mlp.*`, `linear_1.*`) equals that forward, written here in PyTorch from the released code's
description (Qwen3MLP on the token embeddings, per-row adaptive pooling of rows past the threshold to
int(threshold + (n - threshold) * ratio) tokens, causal Qwen3Model over the right-padded result, mean
pooling, linear_1), on a tiny random Qwen3 within 1e-5 (float32); so does that folder re-exported by us and
loaded by sentence-transformers (the shipped modeling_jasper_jax_v2.py)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jasper_jax.models.token_compression import (
    CompressionConfig,
    TokenCompressor,
    adaptive_pool,
    compressed_length,
    compressed_mask,
    pooling_weights,
)

THRESHOLD = 80


def test_pooling_weights_equal_torch_adaptive_avg_pool1d_for_every_length_pair():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    pairs = [(n, t) for n in range(1, 41) for t in range(1, n + 1)]
    lengths, targets = (jnp.asarray([pair[k] for pair in pairs]) for k in (0, 1))
    weights = np.asarray(pooling_weights(lengths, targets, 40, 40))
    for row, (n, t) in enumerate(pairs):
        ours = weights[row, :t, :n] @ x[:n]
        theirs = F.adaptive_avg_pool1d(torch.tensor(x[:n].T[None]), t)[0].T.numpy()
        assert np.abs(ours - theirs).max() < 1e-6, (n, t)
        assert not weights[row, t:].any() and not weights[row, :, n:].any(), (n, t)


@pytest.mark.parametrize("ratio", [0.5, 0.33, 1 / 3, 0.8, 1.0])
def test_rows_compress_to_the_released_lengths_and_short_rows_are_copied(ratio):
    rng = np.random.default_rng(1)
    lengths = np.array([203, 81, 80, 37, 1, 150])
    length = 208
    x = rng.standard_normal((len(lengths), length, 4)).astype(np.float32)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    new_mask = compressed_mask(lengths, ratio, THRESHOLD)
    expected = [n if n <= THRESHOLD else int(THRESHOLD + (n - THRESHOLD) * ratio) for n in lengths]
    assert new_mask.sum(1).tolist() == expected
    assert new_mask.shape[1] == max(expected) <= compressed_length(ratio, THRESHOLD, length)
    pooled = np.asarray(adaptive_pool(jnp.asarray(x), jnp.asarray(mask), jnp.asarray(new_mask)))
    for row, (n, t) in enumerate(zip(lengths, expected, strict=True)):
        if n <= THRESHOLD:
            assert np.array_equal(pooled[row, :n], x[row, :n])  # unchanged
        theirs = F.adaptive_avg_pool1d(torch.tensor(x[row, :n].T[None]), t)[0].T.numpy()
        assert np.abs(pooled[row, :t] - theirs).max() < 1e-6
        assert not pooled[row, t:].any()


def test_static_ratio_equals_host_mask():
    """The jit path (ratio -> length table, output length from the input length) gives the host path's
    values on the kept tokens."""
    from flax import nnx

    with nnx.use_eager_sharding(False):  # no mesh here: the sharding annotations stay metadata
        compressor = TokenCompressor(CompressionConfig(intermediate_size=12, threshold=8), 6, rngs=nnx.Rngs(0))
    lengths = np.array([30, 9, 8, 3])
    mask = (np.arange(32)[None] < lengths[:, None]).astype(np.int32)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 32, 6)).astype(np.float32))
    static, static_mask = compressor(x, jnp.asarray(mask), ratio=0.4)
    host_mask = compressed_mask(lengths, 0.4, 8)
    host, _ = compressor(x, jnp.asarray(mask), new_mask=jnp.asarray(host_mask))
    assert static_mask.shape[1] == compressed_length(0.4, 8, 32) >= host_mask.shape[1]
    assert np.array_equal(np.asarray(static_mask)[:, : host_mask.shape[1]], host_mask)
    assert np.abs(np.asarray(static)[:, : host_mask.shape[1]] - np.asarray(host)).max() < 1e-6


class ReleasedJasperV2(torch.nn.Module):
    """The released `JasperV2Encoder` forward (right padding), written from its description."""

    def __init__(self, config, out_features):
        super().__init__()
        from transformers import Qwen3Model
        from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

        self.model = Qwen3Model(config)
        self.jasper_mlp = Qwen3MLP(config)
        self.linear_1 = torch.nn.Linear(config.hidden_size, out_features, bias=True)

    def forward(self, input_ids, attention_mask, ratio, threshold=THRESHOLD):
        embeddings = self.jasper_mlp(self.model.embed_tokens(input_ids))
        rows = []
        for row in range(len(input_ids)):
            n = int(attention_mask[row].sum())
            valid = embeddings[row, :n]
            if n > threshold:
                target = int(threshold + (n - threshold) * ratio)
                valid = F.adaptive_avg_pool1d(valid.T[None], target)[0].T
            rows.append(valid)
        length = max(len(row) for row in rows)
        packed = torch.zeros(len(rows), length, embeddings.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for index, row in enumerate(rows):
            packed[index, : len(row)], mask[index, : len(row)] = row, 1
        hidden = self.model(inputs_embeds=packed, attention_mask=mask).last_hidden_state
        weights = mask[..., None].float()
        return self.linear_1((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9))


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory):
    """A tiny random model saved in the released layout (config.json, model.safetensors with model.* /
    jasper_mlp.* / linear_1.*, modules.json with custom_st.JasperTransformer + Normalize, a tokenizer)."""
    from safetensors.torch import save_file
    from transformers import Qwen3Config

    from tests.convert.convert_helpers import save_qwen2_tokenizer

    folder = tmp_path_factory.mktemp("jasper_v2")
    vocab = save_qwen2_tokenizer(folder)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        attn_implementation="eager",
    )
    model = ReleasedJasperV2(config, out_features=24).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(parameter))
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / "model.safetensors"))
    hf = config.to_dict()
    hf.update(architectures=["JasperV2Encoder"], auto_map={"AutoModel": "modeling_qwen3_jasper.JasperV2Encoder"})
    (folder / "config.json").write_text(json.dumps(hf))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "custom_st.JasperTransformer", "kwargs": ["compression_ratio"]},
        {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Normalize").mkdir()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 1024}))
    return folder, model


def long_texts():
    from tests.convert.convert_helpers import TEXTS

    # 5 texts of about 15 to 250 tokens: below and above the threshold of 80
    return [" ".join(TEXTS[i % len(TEXTS)] for i in range(k, k + reps)) for k, reps in enumerate([1, 4, 9, 14, 2])]


@pytest.mark.parametrize("ratio", [None, 0.33, 1.0])
def test_released_layout_equals_the_released_forward(released_folder, ratio):
    from jasper_jax.convert import load_model_folder
    from jasper_jax.data.tokenization import load_tokenizer, pad_batch
    from jasper_jax.encode import encode_texts

    folder, reference = released_folder
    loaded = load_model_folder(folder)
    config = loaded.config
    assert config.token_compression.threshold == THRESHOLD and config.token_compression.ratio == 0.5
    assert config.encoder.model_type == "qwen3" and config.encoder.causal and loaded.default_head == "linear_1"
    tokenizer = load_tokenizer(folder, 512)
    ids = tokenizer.encode(long_texts(), "")
    lengths = [len(row) for row in ids]
    assert min(lengths) < THRESHOLD < max(lengths), lengths
    batch = pad_batch(ids, 256, tokenizer.pad_id)
    with torch.no_grad():
        expected = reference(
            torch.tensor(batch["input_ids"]).long(),
            torch.tensor(batch["attention_mask"]),
            0.5 if ratio is None else ratio,
        ).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    ours = encode_texts(folder, long_texts(), progress=False, batch_size=4, compression_ratio=ratio)
    assert np.abs(ours - expected).max() < 1e-5
    direct = loaded.model(
        jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]), compression_ratio=ratio
    )
    assert np.abs(np.asarray(direct["linear_1"]) - expected).max() < 1e-5


def test_encode_command_takes_the_compression_ratio(released_folder, tmp_path):
    from jasper_jax import cli
    from jasper_jax.encode import encode_texts

    folder, _ = released_folder
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(long_texts()))
    out = tmp_path / "vectors.npy"
    args = ["encode", "--model", str(folder), "--input", str(texts), "--out", str(out), "--no-progress"]
    cli.main([*args, "--compression-ratio", "0.33"])
    compressed = encode_texts(folder, long_texts(), progress=False, compression_ratio=0.33)
    assert np.abs(np.load(out) - compressed).max() < 1e-6
    full = encode_texts(folder, long_texts(), progress=False, compression_ratio=1.0)
    assert np.abs(compressed - full)[3].max() > 1e-4  # the long texts change with the ratio
    with pytest.raises(SystemExit, match="must be in"):
        cli.main([*args, "--compression-ratio", "1.5"])


def test_released_folder_exports_and_sentence_transformers_gives_the_released_forward(released_folder, tmp_path):
    """Import of the released layout -> `jasper-jax export` (shipped modeling_jasper_jax_v2.py) -> SentenceTransformer
    equals the released forward above (PyTorch against PyTorch, no JAX in between) within 1e-5."""
    from sentence_transformers import SentenceTransformer

    from jasper_jax import cli
    from jasper_jax.data.tokenization import load_tokenizer, pad_batch

    folder, reference = released_folder
    assert cli.main(["export", "--checkpoint", str(folder), "--out", str(tmp_path)]) == 0
    model = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu", local_files_only=True)
    ids = load_tokenizer(folder, 512).encode(long_texts(), "")
    batch = pad_batch(ids, 256, 0)
    for ratio in (None, 0.33):
        with torch.no_grad():
            expected = reference(
                torch.tensor(batch["input_ids"]).long(),
                torch.tensor(batch["attention_mask"]),
                0.5 if ratio is None else ratio,
            ).numpy()
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        theirs = model.encode(long_texts(), **({} if ratio is None else {"compression_ratio": ratio}))
        assert np.abs(theirs - expected).max() < 1e-5, ratio
