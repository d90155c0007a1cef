"""Image -> caption retrieval on held-out image-caption pairs (stage 4's evaluation).

Every held-out image is a query; the candidates are all held-out captions; the right answer is the
image's own caption (captions are unique within a split, see `jasper_jax.data.images`). Scores per head:
R@1 and R@10 (the share of images whose caption ranks first / in the top 10 by cosine) next to chance
(k / number of pairs), and the mean cosine between an image and its caption.

    results = image_caption_retrieval(load_any("runs/demo/train/stage4"), "runs/demo/train/images")
    # {"fc1": {"image_r_at_1": 0.41, "image_r_at_10": 0.93, "chance_r_at_1": 0.0078, ...}, ...}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def retrieval_scores(
    image_vectors: np.ndarray, caption_vectors: np.ndarray, ks: tuple[int, ...] = (1, 10)
) -> dict[str, float]:
    """R@k of image i retrieving caption i among all captions (rows L2-normalised), chance, mean cosine."""
    if image_vectors.shape != caption_vectors.shape:
        raise ValueError(f"image vectors {image_vectors.shape} and caption vectors {caption_vectors.shape} differ")
    scores = image_vectors @ caption_vectors.T
    right = np.diag(scores)
    rank = (scores > right[:, None]).sum(axis=1)  # captions scoring strictly higher than the right one
    n = len(scores)
    out = {"pairs": n, "mean_cosine": float(right.mean())}
    for k in ks:
        out[f"image_r_at_{k}"] = float(np.mean(rank < k))
        out[f"chance_r_at_{k}"] = min(1.0, k / n)
    return out


def image_caption_retrieval(
    loaded,
    folder: str | Path,
    *,
    split: str = "heldout",
    heads: list[str] | None = None,
    batch_size: int = 16,
    max_length: int = 128,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """{head: retrieval scores} of `loaded` (a `LoadedModel` with a vision tower) on `folder`'s split."""
    from jasper_jax.data.images import ImageCaptionSource
    from jasper_jax.encode import encode_images, encode_texts

    source = ImageCaptionSource(folder, split)
    heads = heads or list(loaded.config.heads) or ["pooled"]
    results = {}
    for head in heads:
        images = encode_images(loaded, source.image_paths(), head=head, batch_size=batch_size, progress=progress)
        captions = encode_texts(loaded, source.captions(), head=head, max_length=max_length, progress=progress)
        results[head] = retrieval_scores(images, captions)
    return results


def torch_image_caption_retrieval(
    export_folder: str | Path,
    folder: str | Path,
    *,
    split: str = "heldout",
    heads: list[str] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """The same retrieval on the PyTorch side of an export (its shipped `jasper_vision.py`): (scores per head,
    image vectors per head)."""
    import importlib.util

    from jasper_jax.data.images import ImageCaptionSource

    spec = importlib.util.spec_from_file_location("jasper_vision_export", Path(export_folder) / "jasper_vision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    encoder = module.JasperImageEncoder(str(export_folder))
    source = ImageCaptionSource(folder, split)
    heads = heads or [name for module_ in encoder.model for name in getattr(module_, "heads", {})] or [None]
    results, vectors = {}, {}
    for head in heads:
        images = encoder.encode_images(source.image_paths(), head=head)
        kwargs = {"head": head} if head else {}
        captions = encoder.model.encode(source.captions(), normalize_embeddings=True, convert_to_numpy=True, **kwargs)
        name = head or "pooled"
        results[name], vectors[name] = retrieval_scores(images, np.asarray(captions, np.float32)), images
    return results, vectors
