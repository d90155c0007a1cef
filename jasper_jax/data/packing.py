"""Sequence packing (`data.packing`): the step's tokenized texts laid end to end in rows of `max_length`.

Why: with the paper's length mix (short chunks beside 512-token documents) a padded batch runs every text
at the length of its longest one, and most of the compute is spent on padding. Packed, the same texts fill
few full rows, and attention is kept inside each text by segment ids (`jasper_jax.models.packed`).

`pack_batch(ids, max_length, pad_id, row_multiple)` packs first-fit decreasing (longest text first, each into
the first row with room, else a new row) and returns numpy arrays:

    input_ids, attention_mask, segment_ids, positions   (R, max_length) int32
    text_row, text_segment                              (B,) int32

`segment_ids` numbers the texts of a row 1..k in placement order (0 = padding), `positions` restart at 0 in
each segment, and text i of the input lies in row `text_row[i]` as segment `text_segment[i]`: what pooling
needs to give back the B vectors in the input order. Each text is cut at `max_length` exactly as
`tokenization.pad_batch` cuts it (the tokenizer already truncates). R, which varies with the texts, is
rounded up to one of a few buckets (`row_buckets`: eighths of B, each a multiple of `row_multiple`, the
data-parallel size), so that a jitted step compiles a handful of shapes; rows beyond those used are all
padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ROW_KEYS = ("input_ids", "attention_mask", "segment_ids", "positions")  # (R, L): packed rows
TEXT_KEYS = ("text_row", "text_segment")  # (B,): where each text went
ROW_BUCKETS = 8


def row_buckets(batch_size: int, row_multiple: int = 1, count: int = ROW_BUCKETS) -> tuple[int, ...]:
    """The packed row counts a batch of `batch_size` texts may take: ceil(k * B / count) for k = 1..count,
    each rounded up to a multiple of `row_multiple` (the largest bucket holds B texts of max_length each)."""
    if batch_size < 1 or row_multiple < 1:
        raise ValueError(f"batch_size={batch_size} and row_multiple={row_multiple} must be >= 1")
    return tuple(
        sorted({-(-math.ceil(k * batch_size / count) // row_multiple) * row_multiple for k in range(1, count + 1)})
    )


def bucket_rows(rows: int, batch_size: int, row_multiple: int = 1) -> int:
    """The smallest bucket of `row_buckets` holding `rows` rows."""
    for bucket in row_buckets(batch_size, row_multiple):
        if bucket >= rows:
            return bucket
    raise ValueError(f"{rows} packed rows for {batch_size} texts: more rows than texts")


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`(row, offset, rows)`: text i goes to row `row[i]` at token `offset[i]`; `rows` rows are used.

    Texts are placed longest first (ties in input order), each into the first row with room for it."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"text lengths must lie in 1..{capacity}; got {lengths.min()}..{lengths.max()}")
    row = np.zeros(lengths.size, np.int64)
    offset = np.zeros(lengths.size, np.int64)
    remaining = np.zeros(lengths.size, np.int64)  # room left in each opened row
    rows = 0
    for text in np.argsort(-lengths, kind="stable"):
        need = lengths[text]
        fits = np.flatnonzero(remaining[:rows] >= need)
        target = int(fits[0]) if fits.size else rows
        if target == rows:
            remaining[rows] = capacity
            rows += 1
        row[text] = target
        offset[text] = capacity - remaining[target]
        remaining[target] -= need
    return row, offset, rows


def pack_batch(
    ids: Sequence[Sequence[int]], max_length: int, pad_id: int, row_multiple: int = 1
) -> dict[str, np.ndarray]:
    """Pack token id lists into rows of `max_length` (see the module docstring for the arrays returned)."""
    cut = [list(tokens)[:max_length] for tokens in ids]
    lengths = [max(len(tokens), 1) for tokens in cut]  # an empty text still takes one (padding) slot
    row, offset, used = first_fit_decreasing(lengths, max_length)
    rows = bucket_rows(used, len(cut), row_multiple)
    input_ids = np.full((rows, max_length), pad_id, np.int32)
    attention_mask = np.zeros((rows, max_length), np.int32)
    segment_ids = np.zeros((rows, max_length), np.int32)
    positions = np.zeros((rows, max_length), np.int32)
    text_segment = np.zeros(len(cut), np.int32)
    segments_in_row = np.zeros(rows, np.int32)
    for text in np.lexsort((offset, row)):  # in placement order within each row: segments 1..k left to right
        r, start, tokens = row[text], offset[text], cut[text]
        segments_in_row[r] += 1
        text_segment[text] = segments_in_row[r]
        span = slice(start, start + lengths[text])
        input_ids[r, start : start + len(tokens)] = tokens
        attention_mask[r, start : start + len(tokens)] = 1
        segment_ids[r, span] = segments_in_row[r]
        positions[r, span] = np.arange(lengths[text])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "segment_ids": segment_ids,
        "positions": positions,
        "text_row": row.astype(np.int32),
        "text_segment": text_segment,
    }


def pad_fraction(attention_mask: np.ndarray) -> float:
    """The share of a batch's token slots that are padding."""
    return 1.0 - float(np.asarray(attention_mask).sum()) / max(np.asarray(attention_mask).size, 1)
