"""Export of a student with a vision tower: the PyTorch side (shipped jasper_vision.py) reproduces our
image vectors, the folder re-imports, and `jasper-jax encode --images` embeds with our model."""

import importlib.util

import numpy as np
import pytest
from flax import nnx

from jasper_jax.cli import main as cli_main
from jasper_jax.convert import load_model_folder
from jasper_jax.convert.export import export_model
from jasper_jax.convert.load import LoadedModel
from jasper_jax.convert.siglip import attach_vision
from jasper_jax.data.images import ImageCaptionSource, write_shapes_dataset
from jasper_jax.data.tokenization import add_image_tokens, load_tokenizer
from jasper_jax.encode import encode_images
from jasper_jax.models.siglip import tiny_siglip_config

HEADS = {"fc1": 16, "fc2": 8}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, minilm_folder):
    root = tmp_path_factory.mktemp("image_export")
    text = load_model_folder(minilm_folder, heads=HEADS, rngs=nnx.Rngs(3))
    marker_ids = add_image_tokens(load_tokenizer(minilm_folder, 64))
    student, config = attach_vision(
        text.model, tiny_siglip_config(), image_tokens=6, image_token_ids=marker_ids, rngs=nnx.Rngs(4)
    )
    shapes = write_shapes_dataset(root / "shapes", train=4, heldout=5, seed=0, size=40)
    paths = ImageCaptionSource(shapes, "heldout").image_paths()
    loaded = LoadedModel(student, config, minilm_folder, max_seq_length=256, default_head="fc1")
    ours = {head: encode_images(loaded, paths, head=head, batch_size=4, progress=False) for head in HEADS}
    out = export_model(student, config, minilm_folder, root / "export", max_seq_length=256)
    return out, paths, ours, shapes


def _torch_encoder(folder):
    spec = importlib.util.spec_from_file_location("exported_jasper_vision", folder / "jasper_vision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.JasperImageEncoder(str(folder))


def test_pytorch_side_reproduces_image_vectors(exported):
    folder, paths, ours, _ = exported
    encoder = _torch_encoder(folder)
    for head, expected in ours.items():
        theirs = encoder.encode_images(paths, head=head, batch_size=3)
        cosine = (theirs * expected).sum(1)
        assert cosine.min() >= 0.9999, f"{head}: cosine(PyTorch, ours) = {cosine}"
        assert np.abs(theirs - expected).max() < 1e-4, head
    # images differ from each other (the tower is really used)
    assert np.abs(ours["fc1"][0] - ours["fc1"][1]).max() > 1e-4


def test_export_reimports_and_encode_images_command(exported, tmp_path):
    folder, paths, ours, _ = exported
    again = load_model_folder(folder)
    assert again.config.vision == tiny_siglip_config() and again.config.image_tokens == 6
    np.testing.assert_allclose(encode_images(again, paths, head="fc2", progress=False), ours["fc2"], atol=1e-5)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(paths) + "\n")
    assert (
        cli_main(
            [
                "encode",
                "--model",
                str(folder),
                "--images",
                str(listing),
                "--out",
                str(tmp_path / "v.npy"),
                "--no-progress",
            ]
        )
        == 0
    )
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), ours["fc1"], atol=1e-5)


def test_retrieval_scores_rank_the_right_caption():
    from jasper_jax.eval.images import retrieval_scores

    captions = np.eye(12, dtype=np.float32)
    images = np.roll(captions, 1, axis=0)  # image i is closest to caption i - 1, its own caption ties at 0
    images[:6] = captions[:6]  # the first six are exact
    scores = retrieval_scores(images, captions)
    assert scores["image_r_at_1"] == 0.5 and scores["image_r_at_10"] == 1.0, scores
    assert scores["chance_r_at_1"] == 1 / 12 and scores["chance_r_at_10"] == 10 / 12 and scores["pairs"] == 12


def test_image_caption_retrieval_on_held_out_pairs(exported):
    from jasper_jax.eval.images import image_caption_retrieval

    folder, _, _, shapes = exported
    results = image_caption_retrieval(load_model_folder(folder), shapes, heads=["fc2"])
    assert set(results) == {"fc2"}
    values = results["fc2"]
    assert values["pairs"] == 5 and values["chance_r_at_1"] == 0.2 and values["chance_r_at_10"] == 1.0
    assert values["image_r_at_10"] == 1.0 and 0.0 <= values["image_r_at_1"] <= 1.0


def test_eval_command_adds_image_retrieval(exported, tmp_path):
    import json

    from tests.eval.eval_inputs import write_lee_files, write_news_csv

    folder, _, _, shapes = exported
    out = tmp_path / "results.json"
    code = cli_main(
        [
            "eval",
            "--model",
            str(folder),
            "--out",
            str(out),
            "--backend",
            "jax",
            "--heads",
            "fc2",
            "--lee",
            str(write_lee_files(tmp_path / "lee")),
            "--news",
            str(write_news_csv(tmp_path / "news.csv")),
            "--heldout-size",
            "10",
            "--max-length",
            "32",
            "--no-progress",
            "--images",
            str(shapes),
        ]
    )
    assert code == 0
    retrieval = json.loads(out.read_text())["image_retrieval"]
    assert set(retrieval) == {"fc2"} and retrieval["fc2"]["pairs"] == 5
