"""Generated shapes data (deterministic, exact captions, held-out split), SigLIP decoding, and the Grain
image-caption batches (shapes, sharding, exact resume)."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from jasper_jax.data.images import (
    COLOURS,
    POSITIONS,
    ImageCaptionSource,
    load_image,
    make_image_caption_iterator,
    write_shapes_dataset,
)
from jasper_jax.data.tokenization import add_image_tokens, load_tokenizer
from jasper_jax.train.mesh import make_mesh


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=40, heldout=12, seed=3, size=48)


def test_dataset_is_deterministic_unique_and_held_out(shapes, tmp_path):
    again = write_shapes_dataset(tmp_path, train=40, heldout=12, seed=3, size=48)
    for split in ("train", "heldout"):
        assert (shapes / split / "captions.jsonl").read_bytes() == (again / split / "captions.jsonl").read_bytes()
        assert (shapes / split / "images/000007.png").read_bytes() == (again / split / "images/000007.png").read_bytes()
    train, heldout = ImageCaptionSource(shapes, "train").captions(), ImageCaptionSource(shapes, "heldout").captions()
    assert (len(train), len(heldout)) == (40, 12)
    assert len(set(train)) == 40 and len(set(heldout)) == 12 and not set(train) & set(heldout)


def test_captions_describe_the_pixels(shapes):
    """The centre of each named cell has the named colour (every shape covers its cell's centre)."""
    source = ImageCaptionSource(shapes, "heldout")
    for index in range(len(source)):
        row = source[index]
        pixels = np.asarray(Image.open(row["image"]).convert("RGB"))
        for part in row["caption"].split(" and "):
            words = part.split(" ")
            colour = words[1]
            position = " ".join(words[3:])
            cell = POSITIONS.index(position)
            y, x = (cell // 3) * 16 + 9, (cell % 3) * 16 + 8  # triangles are wider below the centre
            assert tuple(pixels[y, x]) == COLOURS[colour], (row, position, pixels[y, x])


def test_decoding_matches_transformers_siglip_processor(shapes):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    path = ImageCaptionSource(shapes, "train")[0]["image"]
    processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    expected = processor(images=Image.open(path), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = load_image(path, 32)
    assert ours.dtype == np.float32 and ours.shape == (32, 32, 3)
    assert np.abs(ours - expected).max() < 1e-6


def test_global_batches_and_exact_resume(shapes, minilm_folder):
    tokenizer = load_tokenizer(minilm_folder, 32)
    start, token, end = add_image_tokens(tokenizer)
    mesh = make_mesh({"data": 4}, jax.devices()[:4])

    def iterator():
        return make_image_caption_iterator(
            shapes,
            tokenizer,
            image_size=32,
            image_tokens=6,
            global_batch_size=8,
            mesh=mesh,
            shuffle_seed=1,
            worker_threads=1,
            prefetch=1,
        )

    first = iterator()
    batch = next(first)
    assert batch["pixel_values"].shape == (8, 32, 32, 3) and batch["input_ids"].shape == (8, 16)
    assert (
        len(batch["pixel_values"].sharding.device_set) == 4 and not batch["pixel_values"].sharding.is_fully_replicated
    )
    ids = np.asarray(batch["input_ids"][0])
    assert list(ids[1:9]) == [start] + [token] * 6 + [end], ids
    assert np.asarray(batch["row_mask"]).all() and np.asarray(batch["caption_mask"]).sum(1).min() > 3
    state = first.get_state()
    expected = [next(first) for _ in range(2)]
    resumed = iterator()
    resumed.set_state(json.loads(json.dumps(state)))
    for want in expected:
        got = next(resumed)
        for key in want:
            assert np.array_equal(np.asarray(got[key]), np.asarray(want[key])), key
