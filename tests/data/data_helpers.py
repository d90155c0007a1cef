"""Helpers for the data tests: a cheap deterministic fake teacher, sample texts, file-tree hashes."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from jasper_jax.data.teacher_encoding import TeacherSpec


def fake_vectors(texts: list[str], dim: int, salt: str = "") -> np.ndarray:
    """A deterministic function of each text alone (like a real teacher): float32 (n, dim), not normalised."""
    return (
        np.stack(
            [np.random.default_rng(zlib.crc32((salt + text).encode())).normal(size=dim) * 3.0 for text in texts]
        ).astype(np.float32)
        if texts
        else np.zeros((0, dim), np.float32)
    )


def fake_factory(dims: dict[str, int]):
    """encoder_factory for encode_store: teacher name -> fake encoder of that dim (prompt mixed in)."""

    def factory(spec: TeacherSpec):
        return lambda texts: fake_vectors([spec.prompt + t for t in texts], dims[spec.name], spec.name)

    return factory


def sample_texts(count: int, seed: int = 0) -> list[str]:
    """Texts of varied lengths (1 to ~90 words), with some non-ASCII and JSON-hostile characters."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "délta", 'quote"s', "back\\slash", "naïve", "日本", "new\nline", "x"]
    return [f"{i}: " + " ".join(rng.choice(words, size=int(rng.integers(1, 90)))) for i in range(count)]


def tree_hash(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under folder (relative path -> digest): equal dicts = byte-identical trees."""
    folder = Path(folder)
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def finished_shards(store: str | Path) -> int:
    """How many shards the workers have recorded as finished (`<teacher>/NNNNN.json`)."""
    return len(list(Path(store).glob("*/[0-9]*.json")))
