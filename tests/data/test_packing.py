"""The first-fit-decreasing packer and packed pipeline batches (`data.packing`).

Properties checked against independent references: a plain-Python first-fit-decreasing for the row count,
the token lists themselves (every text placed once, whole, in one segment, positions restarting), and the
padded pipeline's batches of the same rows (same tokens, same truncation, same teacher rows)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from jasper_jax.data.packing import first_fit_decreasing, pack_batch, row_buckets
from jasper_jax.data.pipeline import make_train_iterator
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.tokenization import load_tokenizer
from tests.data.data_helpers import sample_texts


def reference_ffd_rows(lengths, capacity):
    """Textbook first-fit decreasing: the number of bins."""
    bins = []
    for n in sorted(lengths, reverse=True):
        for i, room in enumerate(bins):
            if room >= n:
                bins[i] -= n
                break
        else:
            bins.append(capacity - n)
    return len(bins)


def unpack(packed):
    """Text i's tokens and positions, read back through text_row / text_segment."""
    texts = []
    for row, segment in zip(packed["text_row"], packed["text_segment"]):
        where = np.flatnonzero(packed["segment_ids"][row] == segment)
        assert np.array_equal(where, np.arange(where[0], where[0] + where.size)), "segment not contiguous"
        real = packed["attention_mask"][row, where].astype(bool)
        texts.append((packed["input_ids"][row, where][real].tolist(), packed["positions"][row, where].tolist()))
    return texts


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("row_multiple", [1, 4])
def test_every_text_placed_once_in_order_within_max_length(seed, row_multiple):
    rng = np.random.default_rng(seed)
    max_length, count = 32, 40
    ids = [rng.integers(1, 100, int(n)).tolist() for n in rng.integers(1, 45, count)]  # some past 32
    packed = pack_batch(ids, max_length, pad_id=0, row_multiple=row_multiple)
    rows = packed["input_ids"].shape[0]
    assert packed["input_ids"].shape == packed["segment_ids"].shape == packed["positions"].shape == (rows, max_length)
    assert packed["text_row"].shape == packed["text_segment"].shape == (count,)
    # row count: the bucket of first-fit decreasing's bins, divisible by the data-parallel size
    lengths = [min(len(t), max_length) for t in ids]
    used = reference_ffd_rows(lengths, max_length)
    assert rows % row_multiple == 0 and rows in row_buckets(count, row_multiple)
    assert rows == min(b for b in row_buckets(count, row_multiple) if b >= used)
    assert int(packed["segment_ids"].astype(bool).any(axis=1).sum()) == used  # rows past `used` are empty
    # each (row, segment) holds exactly one text; the texts come back in their input order, cut at max_length
    assert len(set(zip(packed["text_row"].tolist(), packed["text_segment"].tolist()))) == count
    for i, (tokens, positions) in enumerate(unpack(packed)):
        assert tokens == ids[i][:max_length]
        assert positions == list(range(len(tokens)))
    # segments 1..k per row, left to right, then padding (segment 0, mask 0) to the end of the row
    for row in range(rows):
        segments = packed["segment_ids"][row]
        real = segments[segments > 0]
        assert np.array_equal(np.unique(real), np.arange(1, real.max() + 1)) if real.size else True
        assert np.all(np.diff(segments[: real.size]) >= 0) and not segments[real.size :].any()
        assert np.array_equal(packed["attention_mask"][row], (segments > 0).astype(np.int32))
    assert packed["attention_mask"].sum() == sum(lengths)


def test_first_fit_decreasing_places_longest_first_into_the_first_row_with_room():
    row, offset, rows = first_fit_decreasing([3, 8, 5, 2, 6], capacity=10)
    # 8 -> row 0 [0, 8); 6 -> row 1 [0, 6); 5 -> row 2; 3 -> row 1 [6, 9); 2 -> row 0 [8, 10)
    assert rows == 3
    assert row.tolist() == [1, 0, 2, 0, 1] and offset.tolist() == [6, 0, 0, 8, 0]
    with pytest.raises(ValueError, match="1..10"):
        first_fit_decreasing([11], capacity=10)


def test_row_buckets_are_few_and_divisible_by_the_data_parallel_size():
    assert row_buckets(128, 8) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert row_buckets(128, 1, count=4) == (32, 64, 96, 128)
    for batch, multiple in [(16, 8), (24, 8), (12, 4), (5, 1)]:
        buckets = row_buckets(batch, multiple)
        assert len(buckets) <= 8 and all(b % multiple == 0 for b in buckets) and buckets[-1] >= batch


def test_a_text_longer_than_max_length_is_truncated_as_the_padded_batch(minilm_folder):
    tokenizer = load_tokenizer(minilm_folder, 32)
    texts = ["word " * 500, "short", "a few more words here"]
    ids = tokenizer.encode(texts)
    padded = tokenizer.batch(texts)
    packed = pack_batch(ids, 32, tokenizer.pad_id)
    for i, (tokens, _) in enumerate(unpack(packed)):
        assert tokens == padded["input_ids"][i][padded["attention_mask"][i].astype(bool)].tolist()
    assert unpack(packed)[0][0][-1] == 102  # [SEP] kept: the tokenizer truncates, as without packing


@pytest.fixture
def store_path(make_store):
    texts = sample_texts(40, seed=2) + ["word " * 300] * 3
    return make_store(texts, dims={"a": 8, "b": 4}, shard_rows=7)


def test_packed_pipeline_batches_hold_the_padded_batches_texts(store_path, minilm_folder):
    tokenizer = load_tokenizer(minilm_folder, 128)
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    common = dict(global_batch_size=16, mesh=mesh, max_length=128, shuffle_seed=5)
    padded = make_train_iterator(store_path, tokenizer, **common)
    packed = make_train_iterator(store_path, tokenizer, packing=True, **common)
    row_counts = []
    for _ in range(3):
        a, b = next(padded), next(packed)
        assert sorted(b) == sorted(
            [
                "input_ids",
                "attention_mask",
                "segment_ids",
                "positions",
                "text_row",
                "text_segment",
                "teacher",
                "row_mask",
            ]
        )
        rows = b["input_ids"].shape[0]
        row_counts.append(rows)
        assert rows in (8, 16) and b["input_ids"].shape[1] == 128  # row buckets of 16 texts on 8 devices
        for key, value in b.items():
            assert value.sharding.spec[0] == ("data", "fsdp"), key
        np.testing.assert_array_equal(np.asarray(b["teacher"]), np.asarray(a["teacher"]))
        np.testing.assert_array_equal(np.asarray(b["row_mask"]), np.asarray(a["row_mask"]))
        local = {key: np.asarray(value) for key, value in b.items()}
        ids, mask = np.asarray(a["input_ids"]), np.asarray(a["attention_mask"]).astype(bool)
        for i, (tokens, _) in enumerate(unpack(local)):
            assert tokens == ids[i][mask[i]].tolist()
    assert min(row_counts) == 8  # packed: fewer rows than texts


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_shares_of_a_packed_batch_make_the_whole(store_path, minilm_folder, process_count):
    tokenizer = load_tokenizer(minilm_folder, 64)
    store = TeacherStore(store_path)
    common = dict(global_batch_size=8, mesh=None, with_row_index=True, packing=True)
    hosts = [
        make_train_iterator(store_path, tokenizer, process_index=p, process_count=process_count, **common)
        for p in range(process_count)
    ]
    for _ in range(4):
        parts = [next(host) for host in hosts]
        rows = np.concatenate([part["row_index"] for part in parts])
        whole = pack_batch(tokenizer.encode(store.texts(rows)), 64, tokenizer.pad_id, row_multiple=process_count)
        assert len({part["input_ids"].shape[0] for part in parts}) == 1
        for key, value in whole.items():
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value, err_msg=key)


def test_packed_row_counts_are_whole_grad_cache_micro_batches(store_path, minilm_folder):
    """`micro_batch_rows` (GradCache on packed batches): every batch's row count is a multiple of it."""
    tokenizer = load_tokenizer(minilm_folder, 64)
    common = dict(global_batch_size=24, mesh=None, packing=True, shuffle_seed=3)
    iterator = make_train_iterator(store_path, tokenizer, micro_batch_rows=6, **common)
    row_counts = [next(iterator)["input_ids"].shape[0] for _ in range(4)]
    assert all(rows % 6 == 0 for rows in row_counts) and min(row_counts) < 24, row_counts
    assert set(row_buckets(24, 6)) == {6, 12, 18, 24}
