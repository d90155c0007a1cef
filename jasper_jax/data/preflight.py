"""`teachers encode --preflight N`: before a long run, encode N texts per teacher and say whether it is worth it.

Reports texts/s (after a warm-up batch, so compilation and loading are not counted) and the projected time
for the whole corpus on this hardware; checks the vectors are finite and non-degenerate (distinct texts not
collapsed onto one direction) and, with `--reference FILE` (an .npz with `texts` and `vectors`, e.g. from a
model card's example or an earlier run; `vectors` (n, D) or one array per teacher named `vectors_<name>`),
that each text's cosine to the reference is >= 0.999. Writes nothing; exit 0 when every check passes, 1 if not.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from jasper_jax.data.store import l2_normalise
from jasper_jax.errors import EXIT_FAILED, EXIT_OK

MIN_COSINE = 0.999
COLLAPSED = 0.99  # mean cosine between distinct texts above this: the teacher maps everything to one direction


def vector_problems(name: str, texts: Sequence[str], vectors: np.ndarray) -> list[str]:
    """Non-finite rows, all-zero rows, and distinct texts collapsed to one direction."""
    problems = []
    bad = np.nonzero(~np.isfinite(vectors).all(axis=1))[0]
    if bad.size:
        problems.append(f"teacher {name}: non-finite vectors for text(s) {bad[:5].tolist()}")
    zero = np.nonzero(~np.any(vectors != 0, axis=1))[0]
    if zero.size:
        problems.append(f"teacher {name}: all-zero vectors for text(s) {zero[:5].tolist()}")
    _, first = np.unique(np.asarray(texts, dtype=object), return_index=True)
    distinct = l2_normalise(np.nan_to_num(vectors[np.sort(first)]))
    if len(distinct) > 1:
        cosines = distinct @ distinct.T
        mean = float((cosines.sum() - np.trace(cosines)) / (len(distinct) * (len(distinct) - 1)))
        if mean > COLLAPSED:
            problems.append(
                f"teacher {name}: {len(distinct)} distinct texts have mean cosine {mean:.4f} to each other: the "
                "vectors are collapsed (wrong pooling, head or padding side?)"
            )
    return problems


def reference_problems(name: str, texts: Sequence[str], vectors: np.ndarray, reference: dict) -> list[str]:
    """Cosine of each text's vector to the reference's (matched by text) below MIN_COSINE."""
    expected = reference.get(f"vectors_{name}", reference.get("vectors"))
    if expected is None:
        return [f"reference has no vectors for teacher {name} (vectors or vectors_{name})"]
    cosines = np.sum(l2_normalise(vectors) * l2_normalise(expected), axis=1)
    low = np.nonzero(cosines < MIN_COSINE)[0]
    if low.size:
        return [
            f"teacher {name}: cosine to the reference below {MIN_COSINE} for {low.size} of {len(texts)} texts "
            f"(lowest {cosines.min():.5f}, text {int(low[0])}: {texts[int(low[0])][:60]!r})"
        ]
    print(f"  {name}: cosine to the reference >= {cosines.min():.5f} on {len(texts)} texts")
    return []


def preflight(texts, specs, settings, count: int, *, reference: str | None = None, encoder_factory=None) -> int:
    """Encode `count` texts with each teacher (module docstring); print the report; return the exit code."""
    from jasper_jax.data.teacher_encoding import load_encoder

    factory = encoder_factory or (lambda spec: load_encoder(spec, settings=settings))
    loaded = None
    if reference:
        loaded = dict(np.load(reference, allow_pickle=False))
        sample = [str(text) for text in loaded["texts"]]
    else:
        sample = list(texts[: max(2, count)])
    problems: list[str] = []
    total_seconds = 0.0
    for spec in specs:
        encoder = factory(spec)
        warm = min(len(sample), settings.batch_size)
        encoder(sample[:warm])  # loading and compiling are not the throughput
        start = time.perf_counter()
        vectors = np.asarray(encoder(sample), np.float32)
        seconds = max(time.perf_counter() - start, 1e-9)
        if hasattr(encoder, "close"):
            encoder.close()
        rate = len(sample) / seconds
        projected = len(texts) / rate
        total_seconds += projected
        print(
            f"  {spec.name}: {rate:.1f} texts/s on {len(sample)} texts, dim {vectors.shape[1]}; "
            f"{len(texts)} texts would take {projected / 3600:.2f} h here"
        )
        problems += vector_problems(spec.name, sample, vectors)
        if loaded is not None:
            problems += reference_problems(spec.name, sample, vectors, loaded)
    print(f"preflight: all teachers, {len(texts)} texts: {total_seconds / 3600:.2f} h on this hardware (one worker)")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK
