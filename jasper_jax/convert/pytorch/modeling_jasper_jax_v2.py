"""Jasper-Token-Compression's `JasperV2Encoder` for a jasper-jax student with a token compressor.

Shipped by `jasper-jax export` next to the weights (`config.json` points AutoModel here through `auto_map`).
The released model's forward (Jasper-Token-Compression-600M, `modeling_qwen3_jasper.py`), written again:
token embeddings -> `jasper_mlp` (gated MLP) -> per text of n > threshold tokens, adaptive average pooling
to int(threshold + (n - threshold) * ratio) tokens (shorter texts unchanged) -> `Qwen3Model` over the
re-padded result -> mean over the compressed tokens -> `linear_1`. The vector is not normalised (the
sentence-transformers Normalize module follows).

    SentenceTransformer(DIR, trust_remote_code=True).encode(texts, compression_ratio=0.33)
    AutoModel.from_pretrained(DIR, trust_remote_code=True)(**batch, compression_ratio=0.33)  # (B, projection_dim)

config.json: `jasper_compression_threshold` (80), `jasper_compression_ratio` (the default, 0.5),
`jasper_compression_intermediate_size` and `_hidden_act` (the MLP), `projection_dim` (linear_1's width,
2048), `jasper_causal` (false: padding-only attention, a bidirectional student). Defaults are the
released model's. Unlike the released code, a call's `compression_ratio` does not become the default of
later calls.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Model, Qwen3PreTrainedModel
from transformers.activations import ACT2FN


class JasperMLP(nn.Module):
    """The released `jasper_mlp` (a `Qwen3MLP`): down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden, intermediate, act):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act_fn = ACT2FN[act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def compress(embeddings, attention_mask, threshold, ratio):
    """(embeddings, mask) with each text of n > threshold tokens pooled to int(threshold + (n - threshold)
    * ratio) tokens, re-padded on the input's padding side (right when any row ends in padding, as released)."""
    right = bool((attention_mask[:, -1] == 0).any())
    rows = []
    for row, mask in zip(embeddings, attention_mask):
        n = int(mask.sum())
        valid = row[:n] if right else row[len(row) - n :]
        if n > threshold:
            valid = F.adaptive_avg_pool1d(valid.T[None], int(threshold + (n - threshold) * ratio))[0].T
        rows.append(valid)
    length = max(len(row) for row in rows)
    out = embeddings.new_zeros(len(rows), length, embeddings.shape[-1])
    new_mask = torch.zeros(len(rows), length, dtype=torch.long, device=embeddings.device)
    for index, row in enumerate(rows):
        span = slice(0, len(row)) if right else slice(length - len(row), length)
        out[index, span], new_mask[index, span] = row, 1
    return out, new_mask


class JasperV2Encoder(Qwen3PreTrainedModel):
    """Token ids -> (B, projection_dim) vectors (not normalised), compressing long texts first."""

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen3Model(config)
        intermediate = getattr(config, "jasper_compression_intermediate_size", None) or config.intermediate_size
        act = getattr(config, "jasper_compression_hidden_act", None) or config.hidden_act
        self.jasper_mlp = JasperMLP(config.hidden_size, intermediate, act)
        self.linear_1 = nn.Linear(config.hidden_size, getattr(config, "projection_dim", 2048), bias=True)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, compression_ratio=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ratio = compression_ratio
        if ratio is None:
            ratio = getattr(self.config, "jasper_compression_ratio", 0.5)
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"compression_ratio={ratio}; it must be in (0, 1] (1.0 keeps every token)")
        embeddings = self.jasper_mlp(self.model.embed_tokens(input_ids))
        threshold = getattr(self.config, "jasper_compression_threshold", 80)
        embeddings, mask = compress(embeddings, attention_mask, threshold, float(ratio))
        hidden = self.model(inputs_embeds=embeddings, attention_mask=self._encoder_mask(mask, embeddings.dtype))
        hidden = hidden.last_hidden_state
        weights = mask[..., None].to(hidden.dtype)
        return self.linear_1((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9))

    def _encoder_mask(self, mask, dtype):
        """The 2D padding mask (causal student, as released), or for a bidirectional one (`jasper_causal`
        false) a padding-only 4D additive mask given to every layer."""
        if getattr(self.config, "jasper_causal", True):
            return mask
        batch, length = mask.shape
        keep = mask[:, None, None, :].to(dtype)
        return {"full_attention": ((1.0 - keep) * torch.finfo(dtype).min).expand(batch, 1, length, length)}
