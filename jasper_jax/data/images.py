"""Image-caption pairs for stage 4: a generated data set of coloured shapes, image decoding, and the Grain
pipeline of global image-caption batches.

Generated data (`write_shapes_dataset`): each scene is one or two coloured shapes (circle, square,
triangle) in cells of a 3 x 3 grid on a light background, with an exact caption ("a red circle at the
top left and a blue square in the centre"). Everything is a function of (seed, split, index), so the data
are reproducible byte for byte. A caption is held out (`heldout` split) or trained on (`train`) according
to a hash of the caption, so the held-out captions are never seen in training; within a split captions
are unique (retrieval has one right answer).

Layout: `folder/{train,heldout}/images/NNNNNN.png` and `folder/{split}/captions.jsonl`, one
`{"image": "images/NNNNNN.png", "caption": ...}` per line.

Decoding (`load_image`): RGB, resized to the tower's square size with bicubic resampling, scaled to
[0, 1] and normalised with SigLIP's mean 0.5 / std 0.5 -> float32 (H, W, 3) in [-1, 1], as transformers'
SiglipImageProcessor does.

Batches (`make_image_caption_iterator`): the image input ids (start + n image tokens + end, with the
tokenizer's own special tokens), `pixel_values`, the caption ids/mask and `row_mask`, as global arrays
sharded over the batch axes; the iterator saves/restores its position like the text pipeline's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np

from jasper_jax.data.pipeline import TrainBatchIterator, host_row_range, padded_batch_size, repeat_epochs
from jasper_jax.data.tokenization import TextTokenizer, bucket_length, image_token_ids, pad_batch

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "black": (20, 20, 20),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the centre",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
SPLITS = ("train", "heldout")
IMAGE_MEAN, IMAGE_STD = 0.5, 0.5


def caption_split(caption: str, heldout_fraction: float) -> str:
    """'heldout' for a fixed `heldout_fraction` of all captions (by a hash of the text), else 'train'."""
    bucket = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:4], "big") / 2**32
    return "heldout" if bucket < heldout_fraction else "train"


def scene(rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """One or two (colour, shape, cell) objects in distinct cells."""
    count = 1 + int(rng.integers(0, 2))
    cells = rng.choice(len(POSITIONS), size=count, replace=False)
    colours = list(COLOURS)
    return [(colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))], int(cell)) for cell in cells]


def caption_of(objects: list[tuple[str, str, int]]) -> str:
    """'a red circle at the top left and a blue square in the centre' (objects in grid order)."""
    parts = [f"a {colour} {shape} {POSITIONS[cell]}" for colour, shape, cell in sorted(objects, key=lambda o: o[2])]
    return " and ".join(parts)


def draw(objects: list[tuple[str, str, int]], size: int = 64):
    """The PIL image of a scene: each shape fills most of its grid cell."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (245, 245, 240))
    canvas = ImageDraw.Draw(image)
    cell = size / 3
    for colour, shape, index in objects:
        row, column = divmod(index, 3)
        left, top = column * cell + cell * 0.12, row * cell + cell * 0.12
        right, bottom = (column + 1) * cell - cell * 0.12, (row + 1) * cell - cell * 0.12
        fill = COLOURS[colour]
        if shape == "circle":
            canvas.ellipse((left, top, right, bottom), fill=fill)
        elif shape == "square":
            canvas.rectangle((left, top, right, bottom), fill=fill)
        else:
            canvas.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return image


def write_shapes_dataset(
    folder: str | Path,
    *,
    train: int = 512,
    heldout: int = 128,
    seed: int = 0,
    size: int = 64,
    heldout_fraction: float = 0.2,
) -> Path:
    """Write `train` + `heldout` unique image-caption pairs under `folder` (see the module docstring).

    Deterministic given the arguments; an existing complete data set with the same arguments is kept."""
    folder = Path(folder)
    settings = {
        "train": train,
        "heldout": heldout,
        "seed": seed,
        "size": size,
        "heldout_fraction": heldout_fraction,
        "format": 1,
    }
    marker = folder / "shapes.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return folder
    wanted = {"train": train, "heldout": heldout}
    rows: dict[str, list[tuple[str, list]]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    rng = np.random.default_rng(seed)
    attempts = 0
    while any(len(rows[s]) < wanted[s] for s in SPLITS):
        attempts += 1
        if attempts > 100 * (train + heldout) + 10_000:
            raise ValueError(f"cannot draw {wanted} unique captions (heldout_fraction={heldout_fraction})")
        objects = scene(rng)
        caption = caption_of(objects)
        split = caption_split(caption, heldout_fraction)
        if caption in seen or len(rows[split]) >= wanted[split]:
            continue
        seen.add(caption)
        rows[split].append((caption, objects))
    for split in SPLITS:
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        with (folder / split / "captions.jsonl").open("w") as file:
            for index, (caption, objects) in enumerate(rows[split]):
                name = f"images/{index:06d}.png"
                draw(objects, size).save(folder / split / name, format="PNG")
                file.write(json.dumps({"image": name, "caption": caption}) + "\n")
    marker.write_text(json.dumps(settings) + "\n")
    return folder


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    """An image file -> float32 (image_size, image_size, 3), SigLIP-normalised to [-1, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (pixels - IMAGE_MEAN) / IMAGE_STD


class ImageCaptionSource:
    """Random access to one split: `source[i] -> {"image": absolute path, "caption": str}`."""

    def __init__(self, folder: str | Path, split: str = "train"):
        self.folder = Path(folder) / split
        path = self.folder / "captions.jsonl"
        if not path.exists():
            raise FileNotFoundError(
                f"no image-caption split at {path}: expected {{split}}/captions.jsonl (jasper-jax writes one with "
                "jasper_jax.data.images.write_shapes_dataset)"
            )
        self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, str]:
        row = self.rows[int(index)]
        return {"image": str(self.folder / row["image"]), "caption": row["caption"]}

    def captions(self) -> list[str]:
        return [row["caption"] for row in self.rows]

    def image_paths(self) -> list[str]:
        return [str(self.folder / row["image"]) for row in self.rows]


def image_input_length(tokens: int) -> int:
    """The padded length of image inputs: every one has the same `tokens` ids, so no power-of-two bucket
    (300 image tokens + 4 would pad to 512): the next multiple of 16."""
    return -(-tokens // 16) * 16


class ImageCaptionBatchLoader:
    """Grain map: a global batch of row indices -> this host's numpy image-caption batch."""

    def __init__(
        self,
        source: ImageCaptionSource,
        tokenizer: TextTokenizer,
        *,
        image_size: int,
        image_tokens: int,
        global_batch_size: int,
        host_rows: tuple[int, int],
        prompt: str = "",
    ):
        self.source, self.tokenizer, self.image_size = source, tokenizer, image_size
        self.global_batch_size, self.host_rows, self.prompt = global_batch_size, host_rows, prompt
        self.image_ids = image_token_ids(tokenizer, image_tokens)

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        real = indices.size
        if real < self.global_batch_size:
            indices = np.concatenate([indices, np.full(self.global_batch_size - real, indices[0], np.int64)])
        row_mask = np.arange(self.global_batch_size) < real
        rows = [self.source[i] for i in indices]
        captions = self.tokenizer.encode([row["caption"] for row in rows], self.prompt)
        caption_length = bucket_length(max(len(ids) for ids in captions), self.tokenizer.max_length)
        start, stop = self.host_rows
        image_length = image_input_length(len(self.image_ids))
        batch = pad_batch([self.image_ids] * (stop - start), image_length, self.tokenizer.pad_id)
        text = pad_batch(captions[start:stop], caption_length, self.tokenizer.pad_id)
        batch["caption_ids"], batch["caption_mask"] = text["input_ids"], text["attention_mask"]
        batch["pixel_values"] = np.stack([load_image(row["image"], self.image_size) for row in rows[start:stop]])
        batch["row_mask"] = row_mask[start:stop]
        return batch


def make_image_caption_iterator(
    folder: str | Path,
    tokenizer: TextTokenizer,
    *,
    image_size: int,
    image_tokens: int,
    global_batch_size: int,
    mesh: jax.sharding.Mesh | None,
    split: str = "train",
    shuffle_seed: int | None = 0,
    num_epochs: int | None = None,
    prompt: str = "",
    worker_threads: int = 2,
    prefetch: int = 4,
) -> TrainBatchIterator:
    """Global stage-4 batches (`jasper_jax.train.image_stage.IMAGE_BATCH_KEYS`) over a split of `folder`.

    `tokenizer` must carry the image tokens (`add_image_tokens`). `mesh=None`: this host's numpy batches."""
    source = ImageCaptionSource(folder, split)
    if len(source) == 0:
        raise ValueError(f"{source.folder} has no image-caption pairs")
    rows = padded_batch_size(global_batch_size, mesh)  # B' >= B: the extra rows are masked copies
    host_rows = host_row_range(rows, mesh)
    dataset = grain.MapDataset.range(len(source))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=int(shuffle_seed))
    dataset = repeat_epochs(dataset, num_epochs).batch(global_batch_size, drop_remainder=False)
    loader = ImageCaptionBatchLoader(
        source,
        tokenizer,
        image_size=image_size,
        image_tokens=image_tokens,
        global_batch_size=rows,
        host_rows=host_rows,
        prompt=prompt,
    )
    iter_dataset = dataset.map(loader).to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, worker_threads), prefetch_buffer_size=max(1, prefetch))
    )
    fingerprint: dict[str, Any] = {
        "captions_sha256": source.sha256,
        "rows": len(source),
        "global_batch_size": global_batch_size,
        "shuffle_seed": shuffle_seed,
        "num_epochs": num_epochs,
        "image_size": image_size,
        "image_tokens": image_tokens,
        "max_length": tokenizer.max_length,
    }
    return TrainBatchIterator(
        iter(iter_dataset),
        mesh=mesh,
        global_batch_size=rows,
        to_global=mesh is not None,
        fingerprint=fingerprint,
    )
