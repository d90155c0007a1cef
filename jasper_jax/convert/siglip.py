"""SigLIP vision towers <-> Hugging Face `SiglipVisionModel` folders, through the family key map.

Import reads a `SiglipVisionModel` folder or a full `SiglipModel` one (its `vision_config` and
`vision_model.*` tensors; the text tower and the attention-pooling head are skipped). Export writes a
`SiglipVisionModel` folder (`vision_use_head=False`) that transformers loads with `AutoModel`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from jasper_jax.convert.hf import encoder_params_from_hf, encoder_params_to_hf, read_json, read_weights, write_weights
from jasper_jax.models.siglip import SiglipVisionConfig, SiglipVisionEncoder


def _flat(module: nnx.Module) -> dict[str, np.ndarray]:
    from jasper_jax.convert.load import flat_params

    return flat_params(module)


def siglip_params_from_tensors(
    tensors: dict[str, np.ndarray], config: SiglipVisionConfig, *, source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Our tower parameters (path -> array) from Hugging Face tensors (raises listing bad keys)."""
    abstract = nnx.eval_shape(lambda: SiglipVisionEncoder(config, rngs=nnx.Rngs(0)))
    shapes = {
        "/".join(map(str, path)): tuple(variable.shape)
        for path, variable in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }
    return encoder_params_from_hf(tensors, config, shapes, source=source)


def load_siglip_folder(
    path: str | Path, *, dtype: str = "float32", rngs: nnx.Rngs | None = None
) -> tuple[SiglipVisionEncoder, SiglipVisionConfig]:
    """A tower with the weights of a Hugging Face SigLIP folder (config.json + safetensors)."""
    from jasper_jax.convert.load import assign_params

    folder = Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json; expected a Hugging Face SiglipVisionModel / SiglipModel folder")
    config = SiglipVisionConfig.from_hf(read_json(folder / "config.json"))
    params = siglip_params_from_tensors(read_weights(folder), config, source=str(folder))
    with nnx.use_eager_sharding(False):
        tower = SiglipVisionEncoder(config, dtype=dtype, rngs=rngs or nnx.Rngs(0))
    assign_params(tower, params)
    return tower, config


def siglip_tensors(tower_params: dict[str, np.ndarray], config: SiglipVisionConfig) -> dict[str, np.ndarray]:
    """Hugging Face `SiglipVisionModel` tensors from our tower parameters (path -> array)."""
    return encoder_params_to_hf(tower_params, config)


def export_siglip(tower: SiglipVisionEncoder | dict[str, np.ndarray], config: SiglipVisionConfig, out_dir: str | Path) -> Path:
    """Write `out_dir/config.json` + `model.safetensors` for transformers' `SiglipVisionModel`."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = tower if isinstance(tower, dict) else _flat(tower)
    write_weights(siglip_tensors(params, config), out / "model.safetensors")
    hf = config.to_hf()
    hf["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out
