"""Hugging Face / sentence-transformers <-> NNX conversion: one key map per family, import and export.

Import: `load_model` / `load_model_folder` (`jasper_jax.convert.load`); export: `jasper_jax.convert.export`.
Loading any model by name or path (aliases, checkpoints too) is `jasper_jax.loader`'s job.
"""

from jasper_jax.convert.hf import ConversionError
from jasper_jax.convert.load import LoadedModel, load_model, load_model_folder

__all__ = ["ConversionError", "LoadedModel", "load_model", "load_model_folder"]
