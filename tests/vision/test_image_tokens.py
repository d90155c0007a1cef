"""Image tokens: the tokenizer's markers, and pooled image rows in place of the image-token embeddings
(Qwen2 and BERT students); text-only batches are unchanged."""

import numpy as np
import pytest
import torch
from flax import nnx

from jasper_jax.data.tokenization import add_image_tokens, image_token_ids, load_tokenizer, save_tokenizer
from jasper_jax.models import JasperStudent, StudentConfig
from jasper_jax.models.image_inputs import IMAGE_MARKERS
from jasper_jax.models.params import assign_params, flat_params
from tests.vision.vision_helpers import (
    MARKERS,
    N_IMAGE_TOKENS,
    TINY_BERT,
    TINY_QWEN2,
    image_inputs,
    images,
    vision_student,
)

ENCODERS = pytest.mark.parametrize("encoder", [TINY_QWEN2, TINY_BERT], ids=["qwen2", "bert"])


def test_tokenizer_gains_the_three_markers_and_image_inputs_have_n_tokens(tmp_path, minilm_folder):
    tokenizer = load_tokenizer(minilm_folder, 64)
    vocab = tokenizer.tokenizer.get_vocab_size()
    ids = add_image_tokens(tokenizer)
    assert ids == (vocab, vocab + 1, vocab + 2), (ids, vocab)
    assert add_image_tokens(tokenizer) == ids  # idempotent
    start, token, end = ids
    row = image_token_ids(tokenizer, 7)
    cls, sep = tokenizer.tokenizer.token_to_id("[CLS]"), tokenizer.tokenizer.token_to_id("[SEP]")
    assert row == [cls, start] + [token] * 7 + [end, sep], row
    # markers are atomic inside text too, and survive a save / load
    save_tokenizer(tokenizer, minilm_folder, tmp_path)
    again = load_tokenizer(tmp_path, 64)
    assert [again.tokenizer.token_to_id(m) for m in IMAGE_MARKERS] == list(ids)
    assert again.encode(["a photo " + IMAGE_MARKERS[1]])[0][-2] == token
    with pytest.raises(ValueError, match="max_length=64"):
        image_token_ids(tokenizer, 70)


def _manual_embeddings(model: JasperStudent, ids: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Independent reference: token embeddings, marker rows, and row k of torch's AdaptiveAvgPool2d over the
    tower's tokens at the k-th image-token position."""
    table = np.asarray(model.token_embeddings(np.minimum(ids, 63)))
    markers = np.asarray(model.vision.markers.embedding[...])
    tokens = np.array(model.vision.tower(pixels))
    with torch.no_grad():
        pooled = torch.nn.AdaptiveAvgPool2d((N_IMAGE_TOKENS, table.shape[-1]))(torch.from_numpy(tokens)).numpy()
    out = table.copy()
    for b in range(ids.shape[0]):
        k = 0
        for position, token in enumerate(ids[b]):
            if token in MARKERS:
                out[b, position] = markers[MARKERS.index(token)]
            if token == MARKERS[1]:
                out[b, position] = pooled[b, k]
                k += 1
    return out


@ENCODERS
def test_pooled_rows_replace_image_token_embeddings(encoder):
    model = vision_student(encoder)
    ids, mask = image_inputs(3)
    ids[1] = np.roll(ids[1], 2)  # image tokens at other positions in row 1
    mask = (ids != 0).astype(np.int32)
    pixels = images(3)
    embedded = np.asarray(model.vision.embed(ids, model.token_embeddings(ids), pixels))
    expected = _manual_embeddings(model, ids, pixels)
    assert np.abs(embedded - expected).max() < 1e-5
    ours = np.asarray(model.pooled(ids, mask, pixel_values=pixels))
    from jasper_jax.models.pooling import pool

    reference = np.asarray(pool(model.encoder(ids, mask, inputs_embeds=expected), mask))
    assert np.abs(ours - reference).max() < 1e-5


@ENCODERS
def test_each_row_sees_its_own_image(encoder):
    model = vision_student(encoder)
    ids, mask = image_inputs(2)
    pixels = images(2)
    first = model(ids, mask, pixel_values=pixels)["fc1"]
    changed = pixels.copy()
    changed[1] = images(1, seed=9)[0]
    second = model(ids, mask, pixel_values=changed)["fc1"]
    assert np.abs(np.asarray(first[0] - second[0])).max() < 1e-6, "row 0 changed with row 1's image"
    assert np.abs(np.asarray(first[1] - second[1])).max() > 1e-4, "row 1 ignored its image"


@ENCODERS
def test_text_only_batches_are_unchanged(encoder):
    with_vision = vision_student(encoder)
    text_only = JasperStudent(StudentConfig(encoder=encoder, heads={"fc1": 16, "fc2": 8}), rngs=nnx.Rngs(1))
    assign_params(text_only, {k: v for k, v in flat_params(with_vision).items() if not k.startswith("vision/")})
    rng = np.random.default_rng(0)
    mask = (np.arange(10)[None] < np.array([[10], [4]])).astype(np.int32)
    ids = rng.integers(1, 64, (2, 10)).astype(np.int32) * mask
    a, b = with_vision(ids, mask), text_only(ids, mask)
    for name in a:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name


def test_config_round_trips_and_is_checked():
    model = vision_student(TINY_QWEN2)
    again = StudentConfig.from_dict(model.config.to_dict())
    assert again == model.config and again.vision.num_patches == 16 and again.image_token_ids == MARKERS
    with pytest.raises(ValueError, match="image_tokens > 0"):
        StudentConfig(encoder=TINY_QWEN2, vision=model.config.vision)
    with pytest.raises(ValueError, match="no vision tower"):
        JasperStudent(StudentConfig(encoder=TINY_QWEN2), rngs=nnx.Rngs(0)).pooled(
            *image_inputs(1), pixel_values=images(1)
        )
    paths = set(flat_params(model))
    assert "vision/tower/layers/1/attention/query/kernel" in paths and "vision/markers/embedding" in paths
