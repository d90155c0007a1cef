"""The Grain training pipeline: output contract, buckets, order, per-host slices, exact resume (also via Orbax)."""

from __future__ import annotations

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, PartitionSpec

from jasper_jax.data.pipeline import host_row_range, make_train_iterator
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.tokenization import bucket_length, load_tokenizer
from tests.data.data_helpers import sample_texts

ROWS = 45


@pytest.fixture(scope="module")
def tokenizer(minilm_folder):
    return load_tokenizer(minilm_folder, 64)


@pytest.fixture
def store_path(make_store):
    return make_store(sample_texts(ROWS, seed=1), dims={"a": 8, "b": 4}, shard_rows=7)


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


def local_iterator(store_path, tokenizer, **kwargs):
    kwargs.setdefault("global_batch_size", 8)
    return make_train_iterator(store_path, tokenizer, mesh=None, with_row_index=True, **kwargs)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_global_batch_contract(store_path, tokenizer, mesh):
    iterator = make_train_iterator(store_path, tokenizer, global_batch_size=16, mesh=mesh, max_length=64)
    batch = next(iterator)
    assert sorted(batch) == ["attention_mask", "input_ids", "row_mask", "teacher"]
    length = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (16, length)
    assert batch["teacher"].shape == (16, 12) and batch["row_mask"].shape == (16,)
    assert (
        batch["input_ids"].dtype,
        batch["attention_mask"].dtype,
        batch["teacher"].dtype,
        batch["row_mask"].dtype,
    ) == (np.int32, np.int32, np.float32, np.bool_)
    for key, value in batch.items():
        assert isinstance(value, jax.Array)
        assert value.sharding.mesh.shape == mesh.shape
        assert value.sharding.spec[0] == ("data", "fsdp"), (key, value.sharding.spec)
        assert len(value.addressable_shards) == 8 and value.addressable_shards[0].data.shape[0] == 2
    assert batch["input_ids"].sharding.spec == PartitionSpec(("data", "fsdp"), None)
    # no shuffle (official default): rows 0..15 in order, tokenised like the shared tokenizer does it
    store = TeacherStore(store_path)
    expected = tokenizer.batch(store.texts(range(16)))
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), expected["input_ids"])
    np.testing.assert_array_equal(np.asarray(batch["attention_mask"]), expected["attention_mask"])
    np.testing.assert_allclose(np.asarray(batch["teacher"]), store.teacher_vectors(range(16)), atol=0)
    assert np.asarray(batch["row_mask"]).all()


def test_bucket_is_that_of_the_longest_row_and_a_power_of_two(make_store, tokenizer):
    # batches of 8 rows of about 4, 12, 25, 40 and 200 words: buckets 16, 16, 32, 64 and 64 (truncated)
    texts = [" ".join(["word"] * (words + row % 3)) for words in (4, 12, 25, 40, 200) for row in range(8)]
    store_path = make_store(texts, name="lengths")
    store = TeacherStore(store_path)
    lengths_seen = []
    for batch in take(local_iterator(store_path, tokenizer, num_epochs=1), 5):
        rows = batch["row_index"]
        longest = max(len(ids) for ids in tokenizer.encode(store.texts(rows)))
        length = batch["input_ids"].shape[1]
        assert length == bucket_length(longest, 64) and length in (16, 32, 64)
        assert batch["attention_mask"].sum(axis=1).max() == longest  # padding only after the longest row
        lengths_seen.append(length)
    assert lengths_seen == [16, 16, 32, 64, 64]


def test_truncation_at_max_length_keeps_the_end_token(make_store, minilm_folder):
    path = make_store(["word " * 500, "short"], name="long")
    batch = next(local_iterator(path, load_tokenizer(minilm_folder, 32), global_batch_size=2))
    assert batch["input_ids"].shape == (2, 32)
    assert batch["input_ids"][0, -1] == 102  # [SEP]: truncated by the tokenizer, not cut by padding


def test_prompt_prefixes_every_row(store_path, tokenizer):
    plain = next(local_iterator(store_path, tokenizer))
    prompted = next(local_iterator(store_path, tokenizer, prompt="query: "))
    prompt_ids = tokenizer.tokenizer.encode("query:", add_special_tokens=False).ids
    for row in range(8):
        assert list(prompted["input_ids"][row, 1 : 1 + len(prompt_ids)]) == prompt_ids
        assert list(plain["input_ids"][row, 1 : 1 + len(prompt_ids)]) != prompt_ids


def test_order_no_shuffle_seeded_shuffle_and_epochs(store_path, tokenizer):
    unshuffled = np.concatenate([b["row_index"] for b in take(local_iterator(store_path, tokenizer), 5)])
    np.testing.assert_array_equal(unshuffled, np.arange(40))
    first = take(local_iterator(store_path, tokenizer, shuffle_seed=7), 12)
    again = take(local_iterator(store_path, tokenizer, shuffle_seed=7), 12)
    other = take(local_iterator(store_path, tokenizer, shuffle_seed=8), 12)
    assert_same_batches(first, again)
    order = np.concatenate([b["row_index"] for b in first])
    assert not np.array_equal(order[:ROWS], np.arange(ROWS))
    assert not np.array_equal(order, np.concatenate([b["row_index"] for b in other]))
    epoch1, epoch2 = order[:ROWS], order[ROWS : 2 * ROWS]
    assert sorted(epoch1) == list(range(ROWS)) and sorted(epoch2) == list(range(ROWS))
    assert not np.array_equal(epoch1, epoch2), "each epoch is reshuffled"


@pytest.mark.parametrize("start_row", [0, 5])
def test_endless_iterator_with_a_global_batch_of_one(store_path, tokenizer, start_row):
    """Global batch 1, repeating forever, from row 0 or a later row: one row per batch in the store's order
    across the epoch boundary (Grain's repeat(None) overflowed here: its length is sys.maxsize)."""
    batches = take(local_iterator(store_path, tokenizer, global_batch_size=1, start_row=start_row), ROWS + 3)
    order = np.concatenate([b["row_index"] for b in batches])
    np.testing.assert_array_equal(order, (start_row + np.arange(ROWS + 3)) % ROWS)


def test_finite_epochs_pad_the_last_batch_with_masked_rows(store_path, tokenizer):
    batches = list(local_iterator(store_path, tokenizer, num_epochs=1))
    assert len(batches) == 6  # 45 rows / 8
    assert all(b["row_mask"].all() for b in batches[:5])
    last = batches[-1]
    assert last["row_mask"].tolist() == [True] * 5 + [False] * 3
    assert last["row_index"].tolist() == [40, 41, 42, 43, 44, 40, 40, 40]
    assert last["input_ids"].shape[0] == 8 and np.isfinite(last["teacher"]).all()


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_slices_are_disjoint_complete_and_agree_on_length(store_path, tokenizer, process_count):
    steps = 7
    whole = take(local_iterator(store_path, tokenizer, shuffle_seed=3), steps)
    hosts = [
        take(local_iterator(store_path, tokenizer, shuffle_seed=3, process_index=p, process_count=process_count), steps)
        for p in range(process_count)
    ]
    for step in range(steps):
        parts = [hosts[p][step] for p in range(process_count)]
        rows = [part["row_index"] for part in parts]
        assert all(len(r) == 8 // process_count for r in rows)
        joined = np.concatenate(rows)
        assert len(set(joined.tolist())) == len(joined), f"step {step}: hosts overlap {rows}"
        np.testing.assert_array_equal(joined, whole[step]["row_index"])  # complete, in global order
        assert {part["input_ids"].shape[1] for part in parts} == {whole[step]["input_ids"].shape[1]}
        for key in ("input_ids", "attention_mask", "teacher", "row_mask"):
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[step][key])


def test_host_row_range_from_the_mesh(mesh):
    assert host_row_range(16, mesh) == (0, 16)  # one process holds every device
    assert host_row_range(16, None, process_index=2, process_count=4) == (8, 12)
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        host_row_range(16, None, process_index=0, process_count=3)


@pytest.mark.parametrize("resume_at", [0, 1, 4, 6])
def test_exact_resume_from_state(store_path, tokenizer, resume_at):
    kwargs = dict(shuffle_seed=5, global_batch_size=8)
    uninterrupted = take(local_iterator(store_path, tokenizer, **kwargs), resume_at + 4)
    first = local_iterator(store_path, tokenizer, **kwargs)
    take(first, resume_at)
    state = first.get_state()
    take(first, 2)  # the crashed run went on a little; the state was saved before
    resumed = local_iterator(store_path, tokenizer, **kwargs)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), uninterrupted[resume_at:])


def test_state_from_other_settings_is_refused(store_path, tokenizer):
    state = local_iterator(store_path, tokenizer, shuffle_seed=5).get_state()
    with pytest.raises(ValueError, match="shuffle_seed"):
        local_iterator(store_path, tokenizer, shuffle_seed=6).set_state(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        local_iterator(store_path, tokenizer, shuffle_seed=5, global_batch_size=4).set_state(state)


def test_orbax_checkpoint_beside_the_model_resumes_exactly(store_path, tokenizer, mesh, tmp_path):
    """The documented trainer recipe: CheckpointManager with a model item and grain.checkpoint.CheckpointSave."""
    kwargs = dict(global_batch_size=16, mesh=mesh, max_length=64, shuffle_seed=11)
    uninterrupted = take(make_train_iterator(store_path, tokenizer, **kwargs), 6)
    handlers = {"model": ocp.StandardCheckpointHandler(), "data_iter": grain.checkpoint.CheckpointHandler()}
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    iterator = make_train_iterator(store_path, tokenizer, **kwargs)
    model = {"w": jax.numpy.arange(4.0)}
    with ocp.CheckpointManager(tmp_path / "ckpt", options=options, item_handlers=handlers) as manager:
        for step in range(1, 4):
            next(iterator)
            manager.save(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave(model), data_iter=grain.checkpoint.CheckpointSave(iterator)
                ),
            )
        next(iterator)  # the run goes on past the last checkpoint, then dies
        manager.wait_until_finished()
    fresh = make_train_iterator(store_path, tokenizer, **kwargs)
    with ocp.CheckpointManager(tmp_path / "ckpt", options=options, item_handlers=handlers) as manager:
        assert manager.latest_step() == 3
        restored = manager.restore(
            3,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(model), data_iter=grain.checkpoint.CheckpointRestore(fresh)
            ),
        )
    np.testing.assert_array_equal(restored["model"]["w"], model["w"])
    assert_same_batches(take(fresh, 3), uninterrupted[3:])


MULTIPROCESS_SCRIPT = """
import sys
from tests.data.data_helpers import fake_factory, sample_texts
from jasper_jax.data.pipeline import make_train_iterator
from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store

if __name__ == "__main__":
    store = sys.argv[1]
    encode_store(sample_texts(50), store, [TeacherSpec("a", "x")], shard_rows=7,
                 encoder_factory=fake_factory({{"a": 8}}), progress=False)
    def make(workers):
        return make_train_iterator(store, {tokenizer!r}, global_batch_size=8, mesh=None, max_length=64,
                                   shuffle_seed=1, with_row_index=True, process_index=0, process_count=1,
                                   worker_processes=workers)
    import numpy as np
    reference = make(0)
    expected = [next(reference) for _ in range(8)]
    workers = make(2)
    first = [next(workers) for _ in range(5)]
    state = workers.get_state()
    workers.close()
    resumed = make(2)
    resumed.set_state(state)
    rest = [next(resumed) for _ in range(3)]
    resumed.close()
    got = first + rest
    # every array of every batch (ids, mask, teacher vectors, row mask, row index), bit for bit
    same = all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(got, expected))
    rows = [b["row_index"].tolist() for b in got], [b["row_index"].tolist() for b in expected]
    print("SAME" if same and len(got) == 8 else f"DIFFERENT {{rows}}")
"""


def test_worker_processes_give_the_same_batches_and_resume(tmp_path, minilm_folder):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "workers.py"
    script.write_text(MULTIPROCESS_SCRIPT.format(tokenizer=str(minilm_folder)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store")], env=env, capture_output=True, text=True, timeout=120
    )
    assert "SAME" in result.stdout, result.stdout + result.stderr[-3000:]


def test_an_uneven_global_batch_is_padded_with_masked_copies(store_path, tokenizer, mesh):
    """B=10 on 8 batch devices: 16 rows, the first 10 exactly the unsharded batch's, the rest masked."""
    sharded = make_train_iterator(store_path, tokenizer, global_batch_size=10, mesh=mesh, max_length=64)
    reference = local_iterator(store_path, tokenizer, global_batch_size=10, max_length=64)
    for _ in range(3):
        batch, expected = jax.device_get(next(sharded)), next(reference)
        assert batch["row_mask"].shape == (16,) and batch["row_mask"].tolist() == [True] * 10 + [False] * 6
        for key in ("input_ids", "attention_mask", "teacher"):
            np.testing.assert_array_equal(batch[key][:10], expected[key], err_msg=key)
            np.testing.assert_array_equal(batch[key][10:], np.repeat(expected[key][:1], 6, axis=0), err_msg=key)
