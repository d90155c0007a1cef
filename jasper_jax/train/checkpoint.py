"""One Orbax CheckpointManager per stage: asynchronous saves, keep the last K, exact resume.

Items of a checkpoint (directory `workdir/stage{N}/checkpoints/<step>/`):
- `params`: every parameter of the model (trainable and frozen) as a nested dict with string keys
  (`jasper_jax.models.params.state_to_tree`), so a later stage with another trainable split or more heads
  can read it;
- `optimizer`: the optimizer state of the trainable params and the step / non-finite counters;
- `data_iter`: the data iterator's state (Grain's handler, one JSON per process);
- `meta`: JSON with the config, the step, the stage and the package version.
Orbax writes each checkpoint under a temporary name and renames it when complete, so a checkpoint a crash
interrupted is never listed and the latest complete one is resumed. Restoring passes abstract arrays with
the shardings of the current mesh: a checkpoint saved on 8 devices restores onto 4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jasper_jax.models.params import fill_state, flatten_tree, state_to_tree, unflatten_tree
from jasper_jax.train.step import TrainState

FORMAT_VERSION = 1


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (restore targets on the current mesh)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class _IteratorState:
    """Adapts any iterator with `get_state()` / `set_state()` (dict or bytes) to Grain's handler."""

    def __init__(self, iterator: Any):
        self.iterator = iterator

    def get_state(self) -> bytes:
        state = self.iterator.get_state()
        return state if isinstance(state, bytes) else json.dumps(state).encode()

    def set_state(self, state: bytes) -> None:
        try:
            self.iterator.set_state(json.loads(state.decode()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.iterator.set_state(state)

    def start_prefetch(self) -> None:
        start = getattr(self.iterator, "start_prefetch", None)
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
                "data_iter": grain.checkpoint.CheckpointHandler(),
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
            items["data_iter"] = grain.checkpoint.CheckpointSave(_IteratorState(data_iterator))
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
        if data_iterator is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(_IteratorState(data_iterator))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
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
