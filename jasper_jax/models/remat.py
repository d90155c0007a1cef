"""Rematerialisation policies of the encoder layers (`model.remat`), named after `jax.checkpoint_policies`.

- `none`: keep every activation of every layer for the backward pass (fastest, most memory).
- `full`: keep only each layer's input; the whole layer is recomputed in the backward pass (least memory;
  what `remat=True` meant before the policies existed).
- `dots_saveable`: keep the outputs of every matrix product, recompute the rest (norms, activations,
  softmax): most of the speed of `none` at a fraction of its memory.
- `dots_with_no_batch_dims_saveable`: keep only the products without batch dimensions (the projections and
  MLP matmuls, not attention's QK^T / AV), so the (B, heads, L, L) scores are recomputed.
- `offload`: like `dots_with_no_batch_dims_saveable`, but the saved products go to host memory
  (`offload_dot_with_no_batch_dims`, device -> pinned_host); GPUs and TPUs only.

`True` / `False` (configs and saved models from before the policies) read as `full` / `none`.
"""

from __future__ import annotations

from typing import Any

import jax

POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "offload")
OFFLOAD_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")
_BOOLEAN_NAMES = {"true": "full", "false": "none", "1": "full", "0": "none", "yes": "full", "no": "none"}


def normalize(remat: Any) -> str:
    """A policy name from a name or a legacy boolean; raises ValueError naming the choices."""
    if remat is None or isinstance(remat, bool):
        return "full" if remat else "none"
    name = str(remat).strip().lower()
    name = _BOOLEAN_NAMES.get(name, name)
    if name not in POLICIES:
        raise ValueError(f"remat={remat!r}; choose from {', '.join(POLICIES)} (or true/false: full/none)")
    return name


def check_platform(remat: Any, platform: str) -> None:
    """Refuse a policy the platform cannot run (offloading needs host memory a CPU backend does not have)."""
    if normalize(remat) == "offload" and platform.lower() not in OFFLOAD_PLATFORMS:
        raise ValueError(
            f"remat='offload' moves saved activations to pinned host memory, which the {platform} backend "
            "does not have; use 'dots_with_no_batch_dims_saveable' or 'full' here"
        )


def checkpoint_policy(remat: Any):
    """The `jax.checkpoint` policy of a remat name (`full` -> None: save nothing, jax.checkpoint's default)."""
    name = normalize(remat)
    policies = jax.checkpoint_policies
    if name in ("none", "full"):
        return None
    if name == "offload":
        return policies.offload_dot_with_no_batch_dims(offload_src="device", offload_dst="pinned_host")
    return getattr(policies, name)


def checkpointed(function, remat: Any, **kwargs):
    """`function` under `jax.checkpoint` with the policy of `remat` (as is when `remat` is none)."""
    if normalize(remat) == "none":
        return function
    return jax.checkpoint(function, policy=checkpoint_policy(remat), **kwargs)
