"""SigLIP tower against transformers' PyTorch SiglipVisionModel (random small configs), import/export,
and the paper-scale so400m-patch14-384 built abstractly."""

import json

import numpy as np
import pytest
import torch
from flax import nnx

from jasper_jax.convert.siglip import export_siglip, load_siglip_folder
from jasper_jax.models.siglip import SiglipVisionConfig, SiglipVisionEncoder
from jasper_jax.models.student import count_parameters

CONFIGS = {
    # (hidden, intermediate, layers, heads, image, patch, act)
    "patch8": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    ),
    # 30 // 7 = 4 patches per side: the 2 leftover pixel rows/columns are dropped, as by HF's conv
    "uneven_exact_gelu": dict(
        hidden_size=48,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=3,
        image_size=30,
        patch_size=7,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    ),
}


def _reference(tmp_path, values, seed=0):
    from transformers import SiglipVisionConfig as HFConfig
    from transformers import SiglipVisionModel

    torch.manual_seed(seed)
    model = SiglipVisionModel(HFConfig(**values)).eval()
    with torch.no_grad():  # non-trivial norms and biases (HF initialises them to 1 / 0)
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_transformers(tmp_path, name):
    values = CONFIGS[name]
    reference = _reference(tmp_path, values)
    tower, config = load_siglip_folder(tmp_path)
    assert config.num_patches == (values["image_size"] // values["patch_size"]) ** 2
    pixels = (
        np.random.default_rng(1).uniform(-1, 1, (3, values["image_size"], values["image_size"], 3)).astype(np.float32)
    )
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    ours = np.asarray(tower(pixels))
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    error = np.abs(ours - expected).max()
    assert error < 1e-5, f"max |ours - SiglipVisionModel| = {error} ({name})"


def test_export_round_trip_is_bit_identical_and_loads_in_transformers(tmp_path):
    from transformers import AutoModel

    values = CONFIGS["patch8"]
    _reference(tmp_path / "hf", values)
    tower, config = load_siglip_folder(tmp_path / "hf")
    export_siglip(tower, config, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vision_use_head"] is False
    again, _ = load_siglip_folder(tmp_path / "out")
    first, second = nnx.state(tower, nnx.Param), nnx.state(again, nnx.Param)
    for a, b in zip(nnx.to_flat_state(first), nnx.to_flat_state(second)):
        assert a[0] == b[0] and np.array_equal(np.asarray(a[1][...]), np.asarray(b[1][...])), a[0]
    exported = AutoModel.from_pretrained(tmp_path / "out").eval()
    pixels = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = exported(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    error = np.abs(np.asarray(tower(pixels)) - expected).max()
    assert error < 1e-5, f"exported folder differs from ours by {error}"


def test_imports_a_full_siglip_model_folder(tmp_path):
    """A SiglipModel (text + vision) folder: the vision tower is read, the text tower and head skipped."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    full = SiglipModel(
        SiglipConfig(
            text_config=dict(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
            ),
            vision_config=CONFIGS["patch8"],
        )
    ).eval()
    full.save_pretrained(tmp_path, safe_serialization=True)
    tower, config = load_siglip_folder(tmp_path)
    pixels = np.random.default_rng(3).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = full.vision_model(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)
        ).last_hidden_state.numpy()
    assert np.abs(np.asarray(tower(pixels)) - expected).max() < 1e-5


def test_refuses_wrong_image_size():
    tower = SiglipVisionEncoder(SiglipVisionConfig(**CONFIGS["patch8"]), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\)"):
        tower(np.zeros((1, 28, 28, 3), np.float32))


def test_paper_scale_so400m_builds_abstractly():
    config = SiglipVisionConfig()
    assert (config.num_patches, config.hidden_size, config.num_hidden_layers) == (729, 1152, 27)
    abstract = nnx.eval_shape(lambda: SiglipVisionEncoder(config, rngs=nnx.Rngs(0)))
    count = count_parameters(abstract)
    # so400m's vision tower without its pooling head: 412.4M (27 x 15.2M blocks + patch/position embeddings)
    assert 400e6 < count < 420e6, count
