"""One Orbax CheckpointManager per stage: asynchronous saves, keep the last K, exact resume.

Items of a checkpoint (directory `workdir/stage{N}/checkpoints/<step>/`):
- `params`: every parameter of the model (trainable and frozen) as a nested dict with string keys
  (`jasper_jax.models.params.state_to_tree`), so a later stage with another trainable split or more heads
  can read it;
- `optimizer`: the optimizer state of the trainable params and the step / non-finite counters;
- `data_iter`: ONE JSON record of the global input position (`data_position_record`), written by process
  0: the iterators yield global batches, so their state is the same on every process, and a run resumes
  on another process count with the same sequence of global batches. Checkpoints written before this
  (Grain's handler, `process_{i}-of-{n}.json` per process, all identical for the same reason) are read
  from process 0's file on any process count;
- `meta`: JSON with the config, the step, the stage and the package version.
Orbax writes each checkpoint under a temporary name and renames it when complete, so a checkpoint a crash
interrupted is never listed and the latest complete one is resumed. Restoring passes abstract arrays with
the shardings of the current mesh: a checkpoint saved on 8 devices restores onto 4, and on 2 processes
restores onto 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jasper_jax.models.params import fill_state, flatten_tree, state_to_tree, unflatten_tree
from jasper_jax.train.step import TrainState

FORMAT_VERSION = 1
DATA_POSITION_FORMAT = "global-position/1"


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (restore targets on the current mesh)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _state_json(state: Any) -> Any:
    """An iterator state as JSON-able data (states given as JSON bytes are decoded)."""
    if isinstance(state, (bytes, bytearray)):
        return json.loads(bytes(state).decode())
    return state


def data_position_record(iterator: Any) -> dict[str, Any]:
    """The checkpoint's one record of the input position: the iterator's state (global batches taken, its
    pipeline's fingerprint) and the process count that wrote it (for information; it does not bind).

    With several processes, each checks that every process holds the same state (one small collective):
    a pipeline whose position depended on the process would not resume elsewhere."""
    state = _state_json(iterator.get_state())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).digest()[:8]
        multihost_utils.assert_equal(
            np.frombuffer(digest, np.uint8).astype(np.int32), "the data position differs between processes"
        )
    return {"format": DATA_POSITION_FORMAT, "process_count": jax.process_count(), "state": state}


def _set_iterator_state(iterator: Any, state: Any) -> None:
    iterator.set_state(state)
    start = getattr(iterator, "start_prefetch", None)
    if start is not None:
        start()


class StageCheckpointer:
    """Saves and restores one stage's checkpoints under `directory`."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.every = int(every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "params": ocp.StandardCheckpointHandler(),
                "optimizer": ocp.StandardCheckpointHandler(),
                "data_iter": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The step of the latest complete checkpoint, or None."""
        self.manager.reload()
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(
        self,
        step: int,
        state: TrainState,
        frozen: nnx.State,
        data_iterator: Any | None,
        metadata: Mapping[str, Any],
    ) -> None:
        """Start an asynchronous save of everything needed to resume at `step` (returns at once)."""
        params = state_to_tree(nnx.merge_state(state.params, frozen))
        optimizer = {
            "opt_state": state.opt_state,
            "counters": {
                "step": state.step,
                "nonfinite_consecutive": state.nonfinite_consecutive,
                "nonfinite_total": state.nonfinite_total,
            },
        }
        meta = dict(metadata, step=int(step), format_version=FORMAT_VERSION)
        items = dict(
            params=ocp.args.StandardSave(params),
            optimizer=ocp.args.StandardSave(optimizer),
            meta=ocp.args.JsonSave(meta),
        )
        if data_iterator is not None:
            items["data_iter"] = ocp.args.JsonSave(data_position_record(data_iterator))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self,
        step: int,
        abstract_state: TrainState,
        state_shardings: TrainState,
        abstract_frozen: nnx.State,
        frozen_shardings: nnx.State,
        data_iterator: Any | None,
    ) -> tuple[TrainState, nnx.State, dict[str, Any]]:
        """The train state, the frozen params and the metadata at `step`, placed on the given shardings.

        The data iterator (if given) is set to its saved position in place.
        """
        params_target = state_to_tree(
            nnx.merge_state(
                abstract_like(abstract_state.params, state_shardings.params),
                abstract_like(abstract_frozen, frozen_shardings),
            )
        )
        counters = {k: getattr(abstract_state, k) for k in ("step", "nonfinite_consecutive", "nonfinite_total")}
        optimizer_target = {
            "opt_state": abstract_like(abstract_state.opt_state, state_shardings.opt_state),
            "counters": abstract_like(counters, {k: state_shardings.step for k in counters}),
        }
        items = dict(
            params=ocp.args.StandardRestore(params_target),
            optimizer=ocp.args.StandardRestore(optimizer_target),
            meta=ocp.args.JsonRestore(),
        )
        legacy = self._legacy_data_position(step) if data_iterator is not None else None
        if data_iterator is not None and legacy is None:
            items["data_iter"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            record = legacy if legacy is not None else dict(restored["data_iter"])
            if record.get("format") != DATA_POSITION_FORMAT:
                raise ValueError(
                    f"{self.directory}/{step}/data_iter holds a data position of format {record.get('format')!r}; "
                    f"this version reads {DATA_POSITION_FORMAT!r}. Resume with the version that wrote it."
                )
            _set_iterator_state(data_iterator, record["state"])
        params = restored["params"]
        optimizer = restored["optimizer"]
        state = TrainState(
            step=optimizer["counters"]["step"],
            params=fill_state(abstract_state.params, params),
            opt_state=optimizer["opt_state"],
            nonfinite_consecutive=optimizer["counters"]["nonfinite_consecutive"],
            nonfinite_total=optimizer["counters"]["nonfinite_total"],
        )
        frozen = fill_state(abstract_frozen, params)
        return state, frozen, dict(restored["meta"])

    def _legacy_data_position(self, step: int) -> dict[str, Any] | None:
        """The data position of a checkpoint written with Grain's handler (one identical JSON per process:
        process 0's is read, whatever the process count now), as a record; None for a newer checkpoint."""
        folder = self.directory / str(step) / "data_iter"
        files = sorted(folder.glob("process_0-of-*.json")) if folder.is_dir() else []
        if not files:
            return None
        return {"format": DATA_POSITION_FORMAT, "state": json.loads(files[0].read_text())}

    def restore_params(self, step: int, abstract_params: nnx.State, params_shardings: nnx.State) -> dict[str, Any]:
        """The saved params that `abstract_params` also has (a nested dict), on the given shardings.

        Used to start a stage from the previous stage's final checkpoint: parameters the new model has
        and the checkpoint lacks (new heads) keep their fresh initialisation; the caller checks the rest.
        """
        saved = self.manager.item_metadata(step)["params"]
        saved_tree = saved.tree if hasattr(saved, "tree") else saved
        saved_params = flatten_tree(saved_tree)
        model_params = flatten_tree(state_to_tree(abstract_like(abstract_params, params_shardings)))
        missing = sorted(set(saved_params) - set(model_params))
        if missing:
            raise ValueError(f"checkpoint {self.directory}/{step} has parameters the model lacks: {missing[:5]}")
        for name, saved_leaf in saved_params.items():
            shape, want = tuple(saved_leaf.shape), tuple(model_params[name].shape)
            if shape != want:
                raise ValueError(f"parameter {name}: checkpoint shape {shape}, model shape {want}")
        target = unflatten_tree({name: model_params[name] for name in saved_params})
        restored = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
        return restored["params"]

    def host_params(self, step: int | None = None) -> dict[str, Any]:
        """All saved params of `step` (default: the latest) as a nested dict of NumPy arrays.

        Works whatever mesh or process count wrote the checkpoint (export, inspection, tests).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        saved = self.manager.item_metadata(step)["params"]
        saved = saved.tree if hasattr(saved, "tree") else saved
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
        restored = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
        return jax.tree.map(np.asarray, restored["params"])

    def metadata(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        """Block until the pending asynchronous save is complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
