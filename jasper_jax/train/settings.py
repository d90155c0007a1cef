"""The run's settings as frozen, typed objects, built once from the ConfigDict at `train()` entry.

A config file is data (`configs/*.py` return an `ml_collections.ConfigDict`, `--config.FIELD=VALUE` edits it);
the trainer reads these objects instead, so each field is checked and cast in one place and each default
exists once: `config_base.base_config()` and `config_base.stage()` are built from the dataclasses below
(and the objective's from `jasper_jax.losses.ObjectiveConfig`). A field the dataclass does not know is an
error naming it, as a misspelt override is.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from jasper_jax.data.store import TeacherTransform
from jasper_jax.errors import UserError
from jasper_jax.losses import ObjectiveConfig


class TrainingError(UserError):
    """A problem with a training run the user can fix (the message says what); `exit_code` as in `errors`."""


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """Explicit `jax.distributed` setup; empty values are read from the environment (launcher)."""

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    # jax.distributed: a process missing heartbeats this long is declared lost and the others end with an
    # error; how long the first connection to the coordinator may take
    heartbeat_timeout_s: int = 100
    initialization_timeout_s: int = 300


@dataclasses.dataclass(frozen=True)
class WatchdogSettings:
    """`jasper_jax.train.watchdog`: slow-step warnings and the end of a run whose step never completes."""

    factor: float = 5.0  # warn when a step takes longer than factor x the running median (0: never)
    warmup_steps: int = 3  # steps left out of the median (compilation)
    hang_timeout_s: float = 1800.0  # no step completed for this long: stack dump, exit code 4 (0: never)


@dataclasses.dataclass(frozen=True)
class DebugSignal:
    """Tests: process `process` (-1: all) sends itself SIG`name` after step `step` of every stage (0: never)."""

    step: int = 0
    name: str = "TERM"
    process: int = -1


SCAN_LAYERS_NAMES = {"auto": "auto", "true": "true", "1": "true", "yes": "true", "false": "false", "0": "false"}
SCAN_LAYERS_NAMES["no"] = "false"


TOKEN_COMPRESSION_KEYS = ("threshold", "ratio", "intermediate_size", "train_ratio")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The student: `source` "random" (from `family` + `encoder`), an alias such as "minilm", or a folder."""

    source: str = "random"
    family: str = "bert"
    encoder: dict[str, Any] = dataclasses.field(default_factory=dict)
    pooling: str = "mean"
    compute_dtype: str = "float32"
    # jasper_jax.models.remat: none, full, dots_saveable, dots_with_no_batch_dims_saveable, offload (GPU/TPU);
    # true/false (configs from before the policies) read as full/none
    remat: str = "none"
    vector_dropout: float = 0.0
    attention: str = "auto"  # jasper_jax.models.attention: auto, xla, cudnn, splash, einsum
    # the encoder layers under one jax.lax.scan: auto (on for GPU/TPU, off on CPU), true, false
    scan_layers: str = "auto"
    # dynamic token compression (jasper_jax.models.token_compression): {} off; keys threshold (80), ratio
    # (0.5, the default of encode / eval / export), intermediate_size (default the encoder's), train_ratio:
    # the training ratio, a number or a range (low, high) sampled per step (default: ratio)
    token_compression: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from jasper_jax.models import remat as remat_lib

        unknown = sorted(set(self.token_compression) - set(TOKEN_COMPRESSION_KEYS))
        if unknown:
            raise TrainingError(
                f"config field model.token_compression: unknown keys {unknown}; known: {list(TOKEN_COMPRESSION_KEYS)}"
            )
        try:
            self.compression_config(1)
            self.train_ratio_range()
        except (TypeError, ValueError) as error:
            raise TrainingError(f"config field model.{error}") from None

        try:
            object.__setattr__(self, "remat", remat_lib.normalize(self.remat))
        except ValueError as error:
            raise TrainingError(f"config field model.{error}") from None
        scan = SCAN_LAYERS_NAMES.get(str(self.scan_layers).strip().lower())
        if scan is None:
            raise TrainingError(f"config field model.scan_layers={self.scan_layers!r}: choose auto, true or false")
        object.__setattr__(self, "scan_layers", scan)

    def compression_config(self, encoder_intermediate_size: int):
        """The `CompressionConfig` of `token_compression` (None when off)."""
        if not self.token_compression:
            return None
        from jasper_jax.models.token_compression import CompressionConfig

        values = dict(self.token_compression)
        values.pop("train_ratio", None)
        values.setdefault("intermediate_size", encoder_intermediate_size)
        return CompressionConfig(**values)

    def train_ratio_range(self) -> tuple[float, float] | None:
        """`token_compression.train_ratio` as (low, high) with 0 < low <= high <= 1; None when not set."""
        value = self.token_compression.get("train_ratio")
        if value is None:
            return None
        from jasper_jax.models.token_compression import check_ratio

        values = (value, value) if isinstance(value, (int, float)) else tuple(value)
        if len(values) != 2:
            raise ValueError(f"token_compression.train_ratio={value!r}: give a number or (low, high)")
        low, high = (check_ratio(v, "token_compression.train_ratio") for v in values)
        if low > high:
            raise ValueError(f"token_compression.train_ratio={value!r}: low must be <= high")
        return low, high

    def scan_layers_on(self, platform: str) -> bool:
        """Whether the layers are scanned on `platform` ("auto": on GPU/TPU, where compile time dominates;
        off on CPU, where today's unrolled loop is the reference and compiles are small)."""
        return self.scan_layers == "true" or (self.scan_layers == "auto" and platform.lower() != "cpu")


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    """A generated corpus, tokenizer and teacher store under `workdir/data` (tiny runs and tests)."""

    enabled: bool = False
    rows: int = 512
    words: int = 200
    teacher_dims: tuple[int, ...] = (24, 8)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the texts and teacher vectors come from and how they are batched."""

    store: str = ""
    tokenizer: str = ""  # a folder with tokenizer.json; default: the model's folder
    generate: GenerateSettings = GenerateSettings()
    max_length: int = 512
    prompt: str = ""
    shuffle_seed: int | None = None  # None: the store's order (the official code does not shuffle)
    teachers: tuple[str, ...] | None = None  # None: every teacher of the store
    # teacher name -> {keep_dims, sum_segments} applied when the store is read (jasper_jax.data.store)
    teacher_transforms: dict[str, TeacherTransform] = dataclasses.field(default_factory=dict)
    verify_checksums: bool = True
    worker_threads: int = 2
    prefetch: int = 4
    # text stages: pack the step's texts into rows of max_length (jasper_jax.data.packing), same losses
    packing: bool = False
    # Grain multiprocessing prefetch: batches are made in this many worker processes (0 = in-process
    # threads only, `worker_threads`); same batches and exact resume either way
    worker_processes: int = 0


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """AdamW after global-norm clipping (0 = none), linear warmup then cosine decay (official code's defaults)."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    warmup_fraction: float = 0.05
    end_lr_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    every: int = 500
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class HardwareSettings:
    """What MFU is measured against: the device's dense bf16 peak in TFLOP/s per device (`train.flops`).

    0 = detect from `jax.devices()[0].device_kind` (H100/H200 989, TPU v5p 459, v6e 918); an unknown
    device then logs no MFU (said once)."""

    peak_tflops: float = 0.0


@dataclasses.dataclass(frozen=True)
class VisionSettings:
    """Stage 4's tower: "random" (SiglipVisionConfig fields in `encoder`) or a SigLIP folder; n image tokens."""

    source: str = "random"
    encoder: dict[str, Any] = dataclasses.field(default_factory=dict)
    image_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class ImagesSettings:
    """Stage 4's image-caption pairs: `folder`, or generated shapes (`write_shapes_dataset` arguments)."""

    folder: str = ""
    split: str = "train"
    generate: dict[str, Any] = dataclasses.field(default_factory=lambda: {"enabled": False})


DATA_START_NAMES = ("beginning", "continue")


def normalize_data_start(value: Any, number: int) -> str | int:
    """`stage.data_start` as "beginning", "continue" or a row number >= 0 (digit strings from an override
    become ints); anything else is a TrainingError naming the field."""
    if isinstance(value, str) and value.strip().lower() in DATA_START_NAMES:
        return value.strip().lower()
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise TrainingError(
        f"config field stages.stage{number}.data_start={value!r}: use 'beginning' (row 0), 'continue' (where "
        "the previous stage stopped reading) or a row number >= 0"
    )


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """One stage (PAPER.md 3.1): what trains, the model's heads, how new heads start, the schedule.

    `trainable`: regexes over parameter paths, plus the last `trainable_last_layers` encoder layers;
    `head_init`: "random", "prefix:<head>" (the first d output columns of that head) or "fit" (closed-form
    fit on `head_fit_batches` batches, `jasper_jax.train.head_fit`); `init_from`: "previous" (the previous
    configured stage's final checkpoint) or "model" (`model.source`); `micro_batch_size`: if set, the
    step computes the exact global-batch gradient in micro-batches of that many rows (GradCache);
    `objective`: the global objective updated by the stage's own fields. An image stage (stage 4) has
    `vision` and `images`. `data_start` (teacher-store stages): where in the row stream the stage starts
    reading, "beginning" (row 0), "continue" (the row after the last one the previous configured stage
    read) or a row number (`stage_build.stage_start_row`). `token_compression`: whether this stage's student
    has the compressor of `model.token_compression` (False: a stage before it is added, as the successor
    report's stage 1; a later stage then adds a fresh one).
    """

    number: int
    trainable: tuple[str, ...] = ()
    trainable_last_layers: int = 0
    heads: dict[str, int] = dataclasses.field(default_factory=lambda: {"fc1": 0})
    head_init: str = "random"
    head_fit_batches: int = 32
    init_from: Literal["previous", "model"] = "previous"
    batch_size: int = 128
    micro_batch_size: int | None = 0  # GradCache (train/grad_cache.py): encode in micro-batches; 0/None = off
    lr: float = 1e-4
    steps: int = 1000
    objective: ObjectiveConfig = ObjectiveConfig()
    pairs: str = ""  # a pairs folder (`jasper-jax pairs build`): a contrastive stage (`train.pair_stage`)
    pairs_query_prompt: str = ""  # the student's prompt for the queries of a pair stage
    vision: VisionSettings | None = None
    images: ImagesSettings | None = None
    data_start: Any = "beginning"  # "beginning" | "continue" | a row number (str digits from --config)
    token_compression: bool = True  # the student has model.token_compression's compressor in this stage

    def __post_init__(self):
        object.__setattr__(self, "data_start", normalize_data_start(self.data_start, self.number))

    @property
    def is_image_stage(self) -> bool:
        """Whether the stage trains on image-caption pairs (it has `images` and `vision`)."""
        return self.images is not None and self.vision is not None

    @property
    def is_pair_stage(self) -> bool:
        """Whether the stage trains on (query, positive, negatives) examples with `losses.pair_objective`."""
        return bool(self.pairs) and not self.is_image_stage


# the fields of a stage block in a config (`config_base.stage`): all but those derived or optional
STAGE_BLOCK_FIELDS = tuple(
    f.name for f in dataclasses.fields(StageSettings) if f.name not in ("number", "vision", "images")
)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything `train()` reads, typed; `config` is the ConfigDict as given (JSON: checkpoint metadata)."""

    workdir: Path
    seed: int
    mesh: dict[str, Any]  # axis -> size (inside a host), and `dcn`: axis -> size across hosts (train/mesh.py)
    sharding_rules: tuple[tuple[str, Any], ...]
    activation_sharding: bool
    distributed: DistributedSettings
    model: ModelSettings
    data: DataSettings
    optimizer: OptimizerSettings
    objective: ObjectiveConfig
    checkpoint: CheckpointSettings
    log_every: int
    max_consecutive_nonfinite: int
    progress: bool
    debug_nonfinite_steps: tuple[int, ...]
    stages: dict[int, StageSettings]
    hardware: HardwareSettings = HardwareSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    debug_signal: DebugSignal = DebugSignal()
    # persistent XLA compilation cache: "auto" (the user cache folder), a folder, "" off (compile_cache.py)
    compilation_cache_dir: str = "auto"
    config_json: dict[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)

    def stage(self, number: int) -> StageSettings:
        if number not in self.stages:
            raise TrainingError(f"the config has no stage {number} (it has {sorted(self.stages)})")
        return self.stages[number]

    def stage_dir(self, number: int) -> Path:
        return self.workdir.absolute() / f"stage{number}"


# ------------------------------------------------------------------------------------------ building


def _plain(value: Any) -> Any:
    """A ConfigDict block as a plain dict (this module does not import ml_collections: benchmarks stay light)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _cast(kind: Any, value: Any, where: str) -> Any:
    """`value` as the annotated `kind` (int, float, bool, str, Path, tuples, dicts, Literal, Optional, dataclasses)."""
    value = _plain(value)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
        return _cast(kind, value, where)
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if not isinstance(value, Mapping):
            raise TrainingError(f"config field {where}: expected a block of fields, got {value!r}")
        return build(kind, value, where)
    if origin is Literal:
        if value not in args:
            raise TrainingError(f"config field {where}={value!r}: choose from {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = (value,)
        value = tuple(value)
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise TrainingError(f"config field {where}={value!r}: expected {len(kinds)} values")
        return tuple(_cast(k, v, f"{where}[{i}]") for i, (k, v) in enumerate(zip(kinds, value)))
    if origin is dict:
        key_kind, item_kind = args or (Any, Any)
        return {_cast(key_kind, k, where): _cast(item_kind, v, f"{where}.{k}") for k, v in dict(value).items()}
    try:
        if kind is bool:
            if not isinstance(value, (bool, int)):
                raise ValueError
            return bool(value)
        if kind in (int, float, str, Path):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value)
    except (TypeError, ValueError):
        raise TrainingError(f"config field {where}={value!r}: expected {kind.__name__}") from None
    return value


def build(kind: type, values: Mapping[str, Any], where: str, **fixed: Any):
    """A `kind` dataclass from a config block; unknown fields are refused with the known ones listed."""
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind)]
    values = dict(_plain(values))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise TrainingError(
            f"config block {where} has unknown field(s) {unknown}; known: {sorted(set(names) - set(fixed))}"
        )
    return kind(**fixed, **{name: _cast(hints[name], value, f"{where}.{name}") for name, value in values.items()})


def defaults(kind: type, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's defaults as a plain dict (nested dataclasses too): a config block to start from."""
    values = {}
    for field in dataclasses.fields(kind):
        if field.name in exclude:
            continue
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        values[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values


def stage_from_config(config, number: int) -> StageSettings:
    """Stage `number` of the config; its objective is the global one updated by the stage's own fields."""
    key = f"stage{number}"
    block = dict(_plain(config.stages[key]))
    objective = {**_plain(config.objective), **dict(_plain(block.pop("objective", None)) or {})}
    block["objective"] = objective
    return build(StageSettings, block, f"stages.{key}", number=number)


def settings_from_config(config) -> RunSettings:
    """The typed settings of a training config (raises TrainingError naming a bad or unknown field)."""
    numbers = sorted(int(key.removeprefix("stage")) for key in config.stages.keys())
    values = {key: value for key, value in _plain(config).items() if key not in ("stages", "debug")}
    known = {f.name for f in dataclasses.fields(RunSettings)} - {
        "stages",
        "config_json",
        "debug_nonfinite_steps",
        "debug_signal",
    }
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingError(f"the config has unknown top-level field(s) {unknown}; known: {sorted(known)}")
    debug = dict(_plain(config.get("debug", {})) or {})
    run = build(
        RunSettings,
        values,
        "config",
        stages={number: stage_from_config(config, number) for number in numbers},
        debug_nonfinite_steps=tuple(int(step) for step in debug.get("nonfinite_steps", ())),
        debug_signal=build(DebugSignal, debug.get("signal", {}) or {}, "debug.signal"),
        config_json=json.loads(config.to_json_best_effort()),
    )
    check_data_starts(run.stages)
    return run


def check_data_starts(stages: Mapping[int, StageSettings]) -> None:
    """Refuse, before anything trains, a `data_start` the stages cannot honour: "continue" without an
    earlier teacher-store stage, or anything but "beginning" on a stage that does not read the store."""
    for number, stage in sorted(stages.items()):
        field = f"config field stages.stage{number}.data_start={stage.data_start!r}"
        if stage.data_start == "beginning":
            continue
        if stage.is_image_stage or stage.is_pair_stage:
            raise TrainingError(f"{field}: stage {number} does not read the teacher store; leave it 'beginning'")
        earlier = [n for n in sorted(stages) if n < number]
        if stage.data_start == "continue" and not earlier:
            raise TrainingError(f"{field}: no earlier stage is configured to continue from; use 'beginning'")
        if stage.data_start == "continue" and (stages[earlier[-1]].is_image_stage or stages[earlier[-1]].is_pair_stage):
            raise TrainingError(
                f"{field}: the previous stage {earlier[-1]} does not read the teacher store; "
                "use 'beginning' or a row number"
            )
