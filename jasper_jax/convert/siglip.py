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
from jasper_jax.models.params import assign_params, flat_params, param_shapes
from jasper_jax.models.siglip import SiglipVisionConfig, SiglipVisionEncoder


def siglip_params_from_tensors(
    tensors: dict[str, np.ndarray], config: SiglipVisionConfig, *, source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Our tower parameters (path -> array) from Hugging Face tensors (raises listing bad keys)."""
    abstract = nnx.eval_shape(lambda: SiglipVisionEncoder(config, rngs=nnx.Rngs(0)))
    return encoder_params_from_hf(tensors, config, param_shapes(abstract), source=source)


def load_siglip_folder(
    path: str | Path, *, dtype: str = "float32", rngs: nnx.Rngs | None = None
) -> tuple[SiglipVisionEncoder, SiglipVisionConfig]:
    """A tower with the weights of a Hugging Face SigLIP folder (config.json + safetensors)."""
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder}: no config.json; expected a Hugging Face SiglipVisionModel / SiglipModel folder"
        )
    config = SiglipVisionConfig.from_hf(read_json(folder / "config.json"))
    params = siglip_params_from_tensors(read_weights(folder), config, source=str(folder))
    with nnx.use_eager_sharding(False):
        tower = SiglipVisionEncoder(config, dtype=dtype, rngs=rngs or nnx.Rngs(0))
    assign_params(tower, params)
    return tower, config


def siglip_tensors(tower_params: dict[str, np.ndarray], config: SiglipVisionConfig) -> dict[str, np.ndarray]:
    """Hugging Face `SiglipVisionModel` tensors from our tower parameters (path -> array)."""
    return encoder_params_to_hf(tower_params, config)


def export_siglip(
    tower: SiglipVisionEncoder | dict[str, np.ndarray], config: SiglipVisionConfig, out_dir: str | Path
) -> Path:
    """Write `out_dir/config.json` + `model.safetensors` for transformers' `SiglipVisionModel`."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = tower if isinstance(tower, dict) else flat_params(tower)
    write_weights(siglip_tensors(params, config), out / "model.safetensors")
    hf = config.to_hf()
    hf["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------ a student's vision part

VISION_FOLDER = "vision"
IMAGE_CONFIG = "jasper_image.json"
MARKERS_FILE = "markers.safetensors"


def attach_vision(
    model,
    vision: SiglipVisionConfig | str | Path,
    *,
    image_tokens: int,
    image_token_ids: tuple[int, int, int],
    rngs: nnx.Rngs | None = None,
):
    """A copy of the text student `model` with a vision part: `vision` is a config (random tower) or a
    Hugging Face SigLIP folder (pretrained tower). Returns (model, config); text parameters are copied."""
    import dataclasses

    from jasper_jax.models.student import JasperStudent

    tower_params = None
    if not isinstance(vision, SiglipVisionConfig):
        folder = Path(vision)
        vision = SiglipVisionConfig.from_hf(read_json(folder / "config.json"))
        tower_params = siglip_params_from_tensors(read_weights(folder), vision, source=str(folder))
    config = dataclasses.replace(
        model.config, vision=vision, image_tokens=int(image_tokens), image_token_ids=tuple(image_token_ids)
    )
    with nnx.use_eager_sharding(False):
        student = JasperStudent(config, rngs=rngs or nnx.Rngs(0))
    values = {key: value for key, value in flat_params(model).items() if not key.startswith("vision/")}
    if tower_params is not None:
        values.update({f"vision/tower/{key}": value for key, value in tower_params.items()})
    assign_params(student, values)
    return student, config


def export_vision(model, out_dir: str | Path, image_input_ids: list[int]) -> Path:
    """Write `out_dir/vision/`: the tower as a SiglipVisionModel folder, the marker embeddings, and
    `jasper_image.json` (the image input's token ids, the number of pooled rows, the marker ids)."""
    import json

    from jasper_jax.convert.hf import write_weights as write

    config = model.config
    folder = Path(out_dir) / VISION_FOLDER
    params = flat_params(model)
    tower = {key[len("vision/tower/") :]: value for key, value in params.items() if key.startswith("vision/tower/")}
    export_siglip(tower, config.vision, folder)
    write({"markers": params["vision/markers/embedding"]}, folder / MARKERS_FILE)
    (folder / IMAGE_CONFIG).write_text(
        json.dumps(
            {
                "image_tokens": config.image_tokens,
                "image_token_ids": list(config.image_token_ids),
                "image_input_ids": [int(i) for i in image_input_ids],
                "image_size": config.vision.image_size,
                "image_mean": 0.5,
                "image_std": 0.5,
                "resample": "bicubic",
                "format": 1,
            },
            indent=2,
        )
        + "\n"
    )
    return folder


def read_vision(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(StudentConfig vision fields, `vision/...` parameters) of an export's `vision/` folder, or None."""
    from safetensors.numpy import load_file

    folder = Path(folder) / VISION_FOLDER
    if not (folder / IMAGE_CONFIG).exists():
        return None
    meta = read_json(folder / IMAGE_CONFIG)
    config = SiglipVisionConfig.from_hf(read_json(folder / "config.json"))
    params = {
        f"vision/tower/{k}": v
        for k, v in siglip_params_from_tensors(read_weights(folder), config, source=str(folder)).items()
    }
    params["vision/markers/embedding"] = np.asarray(load_file(str(folder / MARKERS_FILE))["markers"], np.float32)
    fields = {
        "vision": config,
        "image_tokens": int(meta["image_tokens"]),
        "image_token_ids": tuple(meta["image_token_ids"]),
    }
    return fields, params
