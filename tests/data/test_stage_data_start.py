"""`stage.data_start`: a stage starts reading the store at row 0, at a given row, or where the previous stopped.

The reference is the pipeline's own row stream read one row at a time from the beginning (store order, or
the seeded shuffle epoch after epoch): the rows a stage reads must be the next stretch of that stream.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from jasper_jax.data.pipeline import make_train_iterator
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.tokenization import load_tokenizer
from jasper_jax.train import config_base
from jasper_jax.train.settings import TrainingError, settings_from_config
from jasper_jax.train.stage_build import DataPaths, stage_input, stage_start_row
from tests.data.data_helpers import sample_texts

ROWS = 45
# stage: (batch_size, steps, data_start); 4 x 8 = 32 rows, then 3 x 6 = 18 more (past the epoch's 45)
STAGES = {1: (8, 4, "beginning"), 2: (6, 3, "continue"), 3: (4, 2, "continue")}


@pytest.fixture(scope="module")
def tokenizer_and_folder(minilm_folder):
    return load_tokenizer(minilm_folder, 64), minilm_folder


@pytest.fixture
def store_path(make_store):
    return make_store(sample_texts(ROWS, seed=3), dims={"a": 8, "b": 4}, shard_rows=7)


def run_settings(store, tokenizer_folder, stages=STAGES, shuffle_seed=None):
    config = config_base.base_config()
    config.data.store, config.data.tokenizer = str(store), str(tokenizer_folder)
    config.data.max_length, config.data.worker_threads, config.data.prefetch = 64, 1, 1
    config.data.shuffle_seed = shuffle_seed
    for number, (batch, steps, start) in stages.items():
        config.stages[f"stage{number}"] = config_base.stage(
            heads={"fc1": 12}, batch_size=batch, steps=steps, data_start=start, init_from="model"
        )
    return settings_from_config(config)


def row_stream(store, tokenizer, count, shuffle_seed):
    """The first `count` positions of the pipeline's row stream (batches of two rows, from the beginning;
    batches of one overflow Grain's length of an endless repeat)."""
    iterator = make_train_iterator(
        store, tokenizer, global_batch_size=2, mesh=None, with_row_index=True, shuffle_seed=shuffle_seed
    )
    return np.concatenate([next(iterator)["row_index"] for _ in range((count + 1) // 2)])[:count]


@pytest.mark.parametrize("shuffle_seed", [None, 4])
def test_continue_reads_the_rows_after_the_previous_stage(store_path, tokenizer_and_folder, shuffle_seed):
    tokenizer, folder = tokenizer_and_folder
    run = run_settings(store_path, folder, shuffle_seed=shuffle_seed)
    assert [stage_start_row(run, run.stages[n], ROWS) for n in (1, 2, 3)] == [0, 32, 50]
    stream = row_stream(store_path, tokenizer, 58, shuffle_seed)
    store = TeacherStore(store_path)
    mesh = jax.make_mesh(
        (2, 1, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3, devices=jax.devices()[:2]
    )
    position = 0
    for number in (1, 2, 3):
        stage = run.stages[number]
        iterator = stage_input(run, stage, DataPaths(store_path, folder), mesh, None)
        for _ in range(stage.steps):  # the trainer's batches: global arrays, compared by teacher vector
            expected_rows = stream[position : position + stage.batch_size]
            batch = next(iterator)
            np.testing.assert_array_equal(np.asarray(batch["teacher"]), store.teacher_vectors(expected_rows))
            position += stage.batch_size
    # the stages together read 58 consecutive positions: every row once, then 13 of the next epoch
    assert sorted(set(stream.tolist())) == list(range(ROWS))


def test_a_row_number_is_honoured_and_resume_mid_stage_is_exact(store_path, tokenizer_and_folder):
    tokenizer, folder = tokenizer_and_folder
    run = run_settings(store_path, folder, {1: (8, 4, "beginning"), 2: (5, 6, "17")})
    assert run.stages[2].data_start == 17 and stage_start_row(run, run.stages[2], ROWS) == 17
    kwargs = dict(global_batch_size=5, mesh=None, with_row_index=True, start_row=17)
    stream = row_stream(store_path, tokenizer, 17 + 30, None)
    uninterrupted = [next(make_train_iterator(store_path, tokenizer, **kwargs))["row_index"]]
    first = make_train_iterator(store_path, tokenizer, **kwargs)
    rows = [next(first)["row_index"] for _ in range(2)]
    state = first.get_state()
    resumed = make_train_iterator(store_path, tokenizer, **kwargs)
    resumed.set_state(state)
    rows += [next(resumed)["row_index"] for _ in range(4)]
    np.testing.assert_array_equal(np.concatenate(rows), stream[17:47])
    np.testing.assert_array_equal(uninterrupted[0], stream[17:22])
    with pytest.raises(ValueError, match="start_row"):  # the saved position belongs to another start
        make_train_iterator(store_path, tokenizer, **dict(kwargs, start_row=0)).set_state(state)


@pytest.mark.parametrize(
    "stages, message",
    [
        ({1: (8, 4, "sometimes")}, "stages.stage1.data_start='sometimes'"),
        ({1: (8, 4, -3)}, "stages.stage1.data_start=-3"),
        ({1: (8, 4, "continue")}, "stages.stage1.data_start='continue': no earlier stage"),
    ],
)
def test_bad_data_start_is_a_training_error_naming_the_field(store_path, tokenizer_and_folder, stages, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        run_settings(store_path, tokenizer_and_folder[1], stages)


def test_row_past_the_store_is_refused(store_path, tokenizer_and_folder):
    run = run_settings(store_path, tokenizer_and_folder[1], {1: (8, 4, 45)})
    with pytest.raises(TrainingError, match=r"stages\.stage1\.data_start=45: the teacher store has 45 rows"):
        stage_start_row(run, run.stages[1], ROWS)
