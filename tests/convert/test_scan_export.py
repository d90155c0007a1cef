"""A student with scanned layers imports and exports the same Hugging Face weights (per-layer keys, same
bytes) as an unrolled one, and the export loads back with identical parameters."""

import numpy as np
from flax import nnx

from jasper_jax.convert import load_model_folder
from jasper_jax.convert.export import export_model
from jasper_jax.models.params import flat_params


def test_scanned_student_round_trips_through_hugging_face_files(qwen2_folder, tmp_path):
    unrolled = load_model_folder(qwen2_folder[0], heads={"fc1": 16}, rngs=nnx.Rngs(7))
    scanned = load_model_folder(qwen2_folder[0], heads={"fc1": 16}, rngs=nnx.Rngs(7), scan_layers=True)
    assert scanned.config.scan_layers and not unrolled.config.scan_layers
    for loaded, name in ((unrolled, "unrolled"), (scanned, "scanned")):
        export_model(loaded.model, loaded.config, loaded.tokenizer_folder, tmp_path / name, max_seq_length=64)
    assert (tmp_path / "scanned" / "model.safetensors").read_bytes() == (
        tmp_path / "unrolled" / "model.safetensors"
    ).read_bytes()
    again = load_model_folder(tmp_path / "scanned")
    before, after = flat_params(scanned.model), flat_params(again.model)
    assert before.keys() == after.keys() and "encoder/layers/0/attention/query/kernel" in before
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
