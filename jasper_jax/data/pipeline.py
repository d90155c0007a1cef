"""The Grain input pipeline: teacher store -> global, sharded training batches with exact resume.

Per step it yields::

    {"input_ids": (B, L) int32, "attention_mask": (B, L) int32, "teacher": (B, D) float32, "row_mask": (B,) bool}

as global `jax.Array`s sharded over the mesh's batch axes ("data", "fsdp"), made from process-local data.
B is the global batch size, L one power-of-two bucket (`tokenization.bucket_length`) for the whole global
batch; a final partial batch (finite `num_epochs`) is filled with copies of its first row, `row_mask` False.
A global batch size the mesh's batch devices do not divide (the paper's stage-4 batch of 90 on 8 devices) is
padded the same way up to the next multiple (`padded_batch_size`): the arrays then have B' >= B rows, the
last B' - B masked. The losses are exact under `row_mask`, so the step is the one of the B real rows.

With `compression` (a student with a token compressor, `CompressionSampling`) the batch also holds
`compressed_mask` (B, T) int32: the compressed attention mask of each text at this batch's compression
ratio, sampled per global batch from (low, high) (a seeded draw from the batch's position, so a resumed run
draws the same), with T the power-of-two bucket of the longest compressed text.

With `packing` (`data.packing`) the B texts are packed into R rows of `max_length` instead
(`jasper_jax.data.packing`): `input_ids`, `attention_mask`, `segment_ids`, `positions` are (R, L) with R one
of a few row buckets divisible by the mesh's batch devices, and `text_row`, `text_segment` (B,) say where
each text went; `teacher` and `row_mask` stay (B, ...) in the texts' order. Every host packs the whole
global batch the same way and keeps its share of the rows and of the texts.

Why it is built this way: the row order (a seeded shuffle per epoch, or the store's order, the official
default, which keeps neighbouring chunks of one document in one batch) depends only on the store, the seed
and B, never on the number of hosts; each host reads the teacher vectors (the bulk of the data) of its own
rows only, but tokenises the texts of the whole global batch, so that every host picks the same L without
communicating.

Exact resume: the iterator is a `grain.DatasetIterator`. `get_state()` / `set_state()` give a JSON-able
dict (`set_state` refuses one from other data or settings) holding the global position: the global
batches taken (the Grain state over the one global dataset, and `global_batches`), the same on every
host. The trainer's checkpoints save it once, beside the model (`jasper_jax.train.checkpoint`), and a run
resumes from it on any process count. Save after taking the batch of the step being saved: the state
counts batches taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jasper_jax.data import packing as packing_lib
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.tokenization import TextTokenizer, bucket_length, load_tokenizer, pad_batch

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of a (B, ...) batch array: dim 0 over the mesh's batch axes, the rest replicated."""
    axes = tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)
    spec = PartitionSpec(axes if axes else None, *([None] * (ndim - 1)))
    return NamedSharding(mesh, spec)


def padded_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh | None) -> int:
    """The rows a global batch has on `mesh`: `global_batch_size` rounded up to a multiple of the devices
    of the mesh's batch axes (the extra rows are masked copies; no mesh: unchanged)."""
    if mesh is None:
        return global_batch_size
    devices = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names]))
    return -(-global_batch_size // devices) * devices


ENDLESS_ROWS = 2**61  # "repeat forever": rows of a finite repeat, far beyond any run (see `repeat_epochs`)


def ignore_sigterm(worker_index: int = 0, worker_count: int = 1) -> None:
    """Grain worker processes ignore SIGTERM: a scheduler that signals the whole process group (SLURM) must
    not end them before the trainer has saved its preemption checkpoint (`train.preemption`); they end
    with the trainer."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def repeat_epochs(dataset: grain.MapDataset, num_epochs: int | None) -> grain.MapDataset:
    """`dataset.repeat(num_epochs)`, with None ("forever") as enough whole epochs for `ENDLESS_ROWS` rows.

    Why not `repeat(None)`: Grain gives that a length of sys.maxsize, and a slice or a batch of 1 over it
    overflows ("cannot fit 'int' into an index-sized integer"). The epochs and their order are the same."""
    if num_epochs is None:
        num_epochs = max(1, ENDLESS_ROWS // max(1, len(dataset)))
    return dataset.repeat(num_epochs)


@dataclasses.dataclass(frozen=True)
class CompressionSampling:
    """Token compression's training ratio: per global batch, uniform in [low, high] (seeded by the batch's
    position in the stage's row stream); `threshold` as the student's compressor."""

    threshold: int
    low: float
    high: float
    seed: int = 0

    def ratio(self, start_row: int, batch_index: int) -> float:
        if self.low == self.high:
            return self.low
        generator = np.random.default_rng([self.seed, start_row, batch_index])
        return float(generator.uniform(self.low, self.high))

    def mask(self, lengths: Sequence[int], ratio: float, max_length: int) -> np.ndarray:
        """(B, T) int32: each text's compressed mask at `ratio`, T the bucket of the longest."""
        from jasper_jax.models.token_compression import compressed_mask, length_table

        lengths = np.asarray(lengths, np.int64)
        needed = int(length_table(float(ratio), self.threshold, int(lengths.max(initial=1)))[lengths].max(initial=1))
        return compressed_mask(lengths, ratio, self.threshold, bucket_length(max(needed, 1), max_length))


def host_row_range(
    global_batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[int, int]:
    """[start, stop) of the global batch rows this host feeds.

    With a mesh and no simulated process: the rows this process's devices hold in `batch_sharding(mesh)`.
    With `process_index`/`process_count` given: the p-th of P equal contiguous slices.
    """
    if process_index is not None or process_count is not None or mesh is None:
        count = jax.process_count() if process_count is None else process_count
        index = jax.process_index() if process_index is None else process_index
        if global_batch_size % count:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {count} processes")
        local = global_batch_size // count
        return index * local, (index + 1) * local
    sharding = batch_sharding(mesh)
    slices = sharding.addressable_devices_indices_map((global_batch_size,)).values()
    covered = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop) for s in slices})
    start, stop = covered[0][0], max(end for _, end in covered)
    if sum(end - begin for begin, end in covered) != stop - start:
        raise ValueError(
            f"this process's devices hold non-contiguous batch rows {covered}: build the mesh with "
            "jax.make_mesh so each process's devices are adjacent on the batch axes"
        )
    return start, stop


class GlobalBatchLoader:
    """Grain map: the row indices of one global batch -> this host's numpy batch (picklable for workers).

    `global_batch_size` here is the rows of the arrays (`padded_batch_size`); fewer indices are padded."""

    def __init__(
        self,
        store: TeacherStore,
        tokenizer: TextTokenizer,
        *,
        prompt: str,
        global_batch_size: int,
        host_rows: tuple[int, int],
        with_row_index: bool = False,
        packing: bool = False,
        row_multiple: int = 1,
        compression: CompressionSampling | None = None,
        start_row: int = 0,
    ):
        self.store, self.tokenizer, self.prompt = store, tokenizer, prompt
        self.global_batch_size, self.host_rows, self.with_row_index = global_batch_size, host_rows, with_row_index
        self.packing, self.row_multiple = packing, row_multiple
        self.compression, self.start_row = compression, start_row

    def at(self, batch_index: int, indices: np.ndarray) -> dict[str, np.ndarray]:
        """`self(indices)` and, with `compression`, the batch's `compressed_mask` at its sampled ratio
        (computed from the whole global batch's lengths, so every host picks the same T)."""
        batch, lengths = self._load(indices)
        if self.compression is not None:
            ratio = self.compression.ratio(self.start_row, int(batch_index))
            start, stop = self.host_rows
            batch["compressed_mask"] = self.compression.mask(lengths, ratio, self.tokenizer.max_length)[start:stop]
        return batch

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self._load(indices)[0]

    def _load(self, indices: np.ndarray) -> tuple[dict[str, np.ndarray], list[int]]:
        """This host's batch and the token count of every text of the global batch."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        real = indices.size
        if real < self.global_batch_size:  # last partial batch: copies of its first row, masked out
            indices = np.concatenate([indices, np.full(self.global_batch_size - real, indices[0], np.int64)])
        row_mask = np.arange(self.global_batch_size) < real
        ids = self.tokenizer.encode(self.store.texts(indices), self.prompt)
        lengths = [min(len(row), self.tokenizer.max_length) for row in ids]
        start, stop = self.host_rows
        if self.packing:
            batch = self.packed(ids, start, stop)
        else:
            length = bucket_length(max(len(row) for row in ids), self.tokenizer.max_length)
            batch = pad_batch(ids[start:stop], length, self.tokenizer.pad_id)
        batch["teacher"] = self.store.teacher_vectors(indices[start:stop])
        batch["row_mask"] = row_mask[start:stop]
        if self.with_row_index:
            batch["row_index"] = indices[start:stop]
        return batch, lengths

    def packed(self, ids: list[list[int]], start: int, stop: int) -> dict[str, np.ndarray]:
        """The global batch packed; this host's share of its rows (R * start / B ...) and of its texts."""
        packed = packing_lib.pack_batch(ids, self.tokenizer.max_length, self.tokenizer.pad_id, self.row_multiple)
        rows = packed["input_ids"].shape[0]
        first, last = start * rows // self.global_batch_size, stop * rows // self.global_batch_size
        batch = {key: packed[key][first:last] for key in packing_lib.ROW_KEYS}
        batch.update({key: packed[key][start:stop] for key in packing_lib.TEXT_KEYS})
        return batch


class TrainBatchIterator(grain.DatasetIterator):
    """Yields the step's global batch; `get_state`/`set_state` for exact resume (a Grain DatasetIterator)."""

    def __init__(
        self,
        parent: grain.DatasetIterator,
        *,
        mesh: jax.sharding.Mesh | None,
        global_batch_size: int,
        to_global: bool,
        fingerprint: dict[str, Any],
    ):
        super().__init__(parent)
        self.mesh, self.global_batch_size, self.to_global = mesh, global_batch_size, to_global
        self.fingerprint = fingerprint
        self.global_batches = 0  # taken since the start (`start_row`): the position, readable

    def __next__(self) -> dict[str, Any]:
        local = next(self._parent)
        self.global_batches += 1
        if not self.to_global:
            return local
        batch = {}
        local_texts = local["row_mask"].shape[0]
        for key, value in local.items():
            if key == "row_index":
                continue
            # (B, ...) text arrays, or packed (R, L) rows: every host holds the same share of both
            global_shape = (value.shape[0] * self.global_batch_size // local_texts, *value.shape[1:])
            batch[key] = jax.make_array_from_process_local_data(
                batch_sharding(self.mesh, value.ndim), value, global_shape
            )
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "pipeline": dict(self.fingerprint),
            "global_batches": self.global_batches,
            "grain": self._parent.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("pipeline", {})
        keys = list(self.fingerprint) + [key for key in saved if key not in self.fingerprint]
        differing = {
            key: (saved.get(key), self.fingerprint.get(key))
            for key in keys
            if saved.get(key) != self.fingerprint.get(key)
        }
        if differing:
            raise ValueError(
                "the saved data-iterator state belongs to a pipeline with other settings (saved, now): "
                f"{differing}. Resume with the store and data settings of the saved run, or start afresh."
            )
        self._parent.set_state(state["grain"])
        self.global_batches = int(state.get("global_batches", state["grain"].get("next_index", 0)))

    def start_prefetch(self) -> None:
        self._parent.start_prefetch()


def make_train_iterator(
    store: TeacherStore | str | Path,
    tokenizer: TextTokenizer | str | Path,
    *,
    global_batch_size: int,
    mesh: jax.sharding.Mesh | None,
    max_length: int | None = None,
    shuffle_seed: int | None = None,
    prompt: str = "",
    num_epochs: int | None = None,
    teachers: Sequence[str] | None = None,
    teacher_transforms: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_threads: int = 2,
    prefetch: int = 4,
    worker_processes: int = 0,
    with_row_index: bool = False,
    packing: bool = False,
    start_row: int = 0,
    micro_batch_rows: int | None = None,
    compression: CompressionSampling | None = None,
) -> TrainBatchIterator:
    """The training iterator over `store` (see the module docstring for what it yields and how to save it).

    `mesh`: the training mesh (batches become global jax.Arrays, padded to `padded_batch_size` rows);
    None = this host's numpy batches.
    `tokenizer`: a `TextTokenizer` or a folder with tokenizer.json (loaded with `max_length`).
    `shuffle_seed`: None = the store's order (official default); an int = a seeded shuffle per epoch.
    `num_epochs`: None = repeat forever; otherwise the last partial batch is padded with `row_mask` False.
    `process_index`/`process_count`: simulate one host of several in one process (tests): batches are then
    this host's numpy arrays (`to_global` is off because JAX has only one real process).
    `teacher_transforms`: teacher name -> `TeacherTransform` (or its fields), applied when the store is read.
    `with_row_index`: also yield the store row of each local row (numpy mode only; for tests/debugging).
    `packing`: pack the texts into rows of max_length (see the module docstring); the data order is the
    same as without, so a saved state resumes with packing switched either way.
    `micro_batch_rows`: with `packing`, GradCache's packed rows per micro-batch (`stage.micro_batch_size`):
    the row buckets are multiples of it too, so that the rows split into whole micro-batches.
    `compression`: a student with a token compressor: batches also hold `compressed_mask` at a ratio
    sampled per batch (see the module docstring; not with `packing`).
    `start_row`: the first batch starts at this position of the row stream (the store's order or the
    shuffle, epoch after epoch): a stage that continues where the previous one stopped reading
    (`stage.data_start`); a saved state counts batches from there.
    """
    if not isinstance(store, TeacherStore):
        store = TeacherStore(store, teachers, teacher_transforms)
    if not isinstance(tokenizer, TextTokenizer):
        tokenizer = load_tokenizer(tokenizer, max_length or 512)
    if max_length is not None and max_length != tokenizer.max_length:
        raise ValueError(
            f"max_length={max_length} but the tokenizer truncates at {tokenizer.max_length}: "
            "load it with load_tokenizer(folder, max_length) or pass the folder"
        )
    if len(store) == 0:
        raise ValueError(f"{store.path} has no rows")
    simulated = process_count is not None and process_count != jax.process_count()
    to_global = mesh is not None and not simulated
    rows = padded_batch_size(global_batch_size, mesh if to_global else None)  # B' >= B: masked copies
    host_rows = host_row_range(
        rows,
        None if simulated else mesh,
        process_index=process_index if simulated else None,
        process_count=process_count if simulated else None,
    )
    row_multiple = process_count if simulated else 1  # packed rows split evenly over hosts and devices
    if to_global:
        batch_devices = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names]))
        row_multiple = math.lcm(batch_devices, jax.process_count())
    if packing and micro_batch_rows:
        row_multiple = math.lcm(row_multiple, int(micro_batch_rows))
    dataset = grain.MapDataset.range(len(store))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=int(shuffle_seed))
    dataset = repeat_epochs(dataset, num_epochs)
    if start_row < 0:
        raise ValueError(f"start_row={start_row} must be >= 0")
    if start_row:
        dataset = dataset[start_row:]
    dataset = dataset.batch(global_batch_size, drop_remainder=False)
    loader = GlobalBatchLoader(
        store,
        tokenizer,
        prompt=prompt,
        global_batch_size=rows,
        host_rows=host_rows,
        with_row_index=with_row_index,
        packing=packing,
        row_multiple=row_multiple,
        compression=compression,
        start_row=start_row,
    )
    if compression is not None and packing:
        raise ValueError("token compression and packing cannot be combined (set data.packing off)")
    iter_dataset = dataset.map_with_index(loader.at).to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, worker_threads), prefetch_buffer_size=max(1, prefetch))
    )
    if worker_processes:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain reads absl flags; outside absl.app.run nobody parsed them
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_processes), worker_init_fn=ignore_sigterm
        )
    fingerprint = {
        "texts_sha256": store.manifest["texts"]["sha256"],
        "rows": len(store),
        "teachers": store.teacher_names,
        "global_batch_size": global_batch_size,
        "shuffle_seed": shuffle_seed,
        "num_epochs": num_epochs,
        "max_length": tokenizer.max_length,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
    }
    if compression is not None and compression.low != compression.high:  # a sampled ratio (a fixed one: as before)
        fingerprint["compression"] = [compression.threshold, compression.low, compression.high, compression.seed]
    if start_row:  # only then: states saved before start_row existed still resume
        fingerprint["start_row"] = int(start_row)
    if store.transforms:  # only then: states saved before transforms existed still resume
        fingerprint["teacher_transforms"] = store.transform_settings
    return TrainBatchIterator(
        iter(iter_dataset), mesh=mesh, global_batch_size=rows, to_global=to_global, fingerprint=fingerprint
    )
