"""Qwen3 as a bidirectional encoder (a Jasper student trained with `causal=False`), for transformers' AutoModel.

Shipped by `jasper-jax export` next to the weights; `config.json` points AutoModel here through `auto_map`.
Identical to `Qwen3Model` except that the attention mask is padding-only (no causal triangle): the 2D
padding mask is turned into a 4D additive mask given to every layer as `{"full_attention": mask}`.
"""

import torch
from transformers import Qwen3Model


class BidirectionalQwen3Model(Qwen3Model):
    """`Qwen3Model` whose tokens attend to every non-padding token (before and after them)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
        if not isinstance(attention_mask, dict):
            dtype = inputs_embeds.dtype
            keep = attention_mask[:, None, None, :].to(dtype)
            additive = ((1.0 - keep) * torch.finfo(dtype).min).expand(batch, 1, length, length)
            attention_mask = {"full_attention": additive}
        kwargs.pop("use_cache", None)
        kwargs.pop("past_key_values", None)
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
