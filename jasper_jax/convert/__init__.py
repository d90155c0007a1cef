"""Hugging Face / sentence-transformers <-> NNX conversion: one key map per family, import and export."""

from jasper_jax.convert.hf import ConversionError
from jasper_jax.convert.load import LoadedModel, load_model, load_model_folder

__all__ = ["ConversionError", "LoadedModel", "load_model", "load_model_folder", "export_model"]


def export_model(*args, **kwargs):
    """See `jasper_jax.convert.export.export_model` (imported lazily)."""
    from jasper_jax.convert.export import export_model as _export_model

    return _export_model(*args, **kwargs)
