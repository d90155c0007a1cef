"""PyTorch files shipped inside exported folders (copied next to the weights; loaded by transformers /
sentence-transformers with `trust_remote_code=True`). They import torch, so nothing here is imported by
jasper_jax itself."""
