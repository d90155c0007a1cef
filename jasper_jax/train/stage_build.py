"""The parts a stage is made of: its model, its jitted step and its input.

`jasper-jax train` builds them from real weights and data (`loop.run_stage`); `jasper-jax compile-check`
builds the same model and step from abstract shapes and an abstract batch, so what is compiled there is
what trains here.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models import JasperStudent, StudentConfig
from jasper_jax.models.student import ENCODER_FAMILIES
from jasper_jax.train import image_stage as image_lib
from jasper_jax.train import layer_stacking
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import batch_size_divisor
from jasper_jax.train.settings import RunSettings, StageSettings, TrainingError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataPaths:
    store: Path
    tokenizer: Path


@dataclasses.dataclass
class StageModel:
    """The stage's student (concrete, or abstract for compile-check) and the tokenizer its inputs use."""

    model: JasperStudent
    config: StudentConfig
    tokenizer_folder: Path | None = None  # an image stage saves its own (text tokenizer + image markers)
    image_tokenizer: Any = None


@dataclasses.dataclass
class StageStep:
    """The model split by the stage's trainable regexes, the optimizer and the jitted step.

    `trainable`, `frozen`, `abstract_state`, `abstract_frozen` and `shardings` name one parameter per layer
    (what checkpoints hold and the loop's start-up works on); `stacking` is the layout `step_fn` takes:
    the same, or with scanned layers their parameters stacked (`jasper_jax.train.layer_stacking`)."""

    graphdef: nnx.GraphDef
    trainable: nnx.State
    frozen: nnx.State
    rest: nnx.State
    patterns: tuple[str, ...]
    tx: Any
    schedule: Any
    abstract_state: step_lib.TrainState
    abstract_frozen: nnx.State
    shardings: step_lib.StepShardings
    step_fn: Any
    stacking: layer_stacking.LayerStacking


# ------------------------------------------------------------------------------------------------ model


def model_source_path(run: RunSettings) -> str | None:
    """The folder of `model.source` (None for a random model)."""
    if run.model.source == "random":
        return None
    from jasper_jax.loader import resolve_model_path

    return str(resolve_model_path(run.model.source))


def _training_options(run: RunSettings) -> dict[str, Any]:
    """The StudentConfig fields the run's `model` block sets; remat and scan_layers for this platform."""
    from jasper_jax.models import remat as remat_lib

    model = run.model
    platform = jax.default_backend()
    try:
        remat_lib.check_platform(model.remat, platform)
    except ValueError as error:
        raise TrainingError(f"config field model.{error}") from None
    return dict(
        compute_dtype=model.compute_dtype,
        remat=model.remat,
        vector_dropout=model.vector_dropout,
        attention=model.attention,
        scan_layers=model.scan_layers_on(platform),
    )


def student_config_for(
    run: RunSettings, heads: dict[str, int], saved: dict[str, Any] | None, compress: bool = True
) -> StudentConfig:
    """The StudentConfig of a stage: the saved one of the previous stage, or a random model's from the config.

    `compress` (`stage.token_compression`): the student has `model.token_compression`'s compressor; a
    previous stage's student without one gets a fresh one (its weights are not in that checkpoint)."""
    if saved is not None:
        config = StudentConfig.from_dict(dict(saved, heads=dict(heads), **_training_options(run)))
        wanted = run.model.compression_config(config.encoder.intermediate_size) if compress else None
        if config.token_compression is not None and not compress:
            raise TrainingError(
                "a stage with token_compression=false follows one whose student has a token compressor; "
                "a compressor cannot be removed: set token_compression=true for this stage"
            )
        if config.token_compression is None and wanted is not None:
            config = dataclasses.replace(config, token_compression=wanted)
        return config
    family = run.model.family
    if family not in ENCODER_FAMILIES:
        raise TrainingError(f"config.model.family={family!r}; choose from {sorted(ENCODER_FAMILIES)}")
    encoder = ENCODER_FAMILIES[family][0](**run.model.encoder)
    return StudentConfig(
        encoder=encoder,
        heads=dict(heads),
        pooling=run.model.pooling,
        token_compression=run.model.compression_config(encoder.intermediate_size) if compress else None,
        **_training_options(run),
    )


def build_student(
    run: RunSettings, heads: dict[str, int], seed: int, saved: dict[str, Any] | None, compress: bool = True
):
    """`(model, student_config)` on the host: a fresh model with the stage's heads.

    `saved`: the previous stage's StudentConfig dict (the encoder weights then come from its checkpoint);
    otherwise `model.source` (random, or a folder loaded with `jasper_jax.convert.load_model`); `compress`
    as `student_config_for`.
    """
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    path = model_source_path(run)
    if saved is not None or path is None:
        student_config = student_config_for(run, heads, saved, compress)
        return JasperStudent(student_config, rngs=rngs), student_config
    from jasper_jax.convert import load_model
    from jasper_jax.models.params import assign_params, flat_params

    loaded, loaded_config = load_model(path, heads=dict(heads), rngs=rngs, **_training_options(run))
    compression = run.model.compression_config(loaded_config.encoder.intermediate_size) if compress else None
    if not compress and loaded_config.token_compression is not None:
        raise TrainingError(
            f"model {path} has a token compressor; a stage with token_compression=false cannot remove it"
        )
    if compression is not None and loaded_config.token_compression is not None:  # keep the folder's MLP width
        compression = dataclasses.replace(
            compression, intermediate_size=loaded_config.token_compression.intermediate_size
        )
    if compression is None or compression == loaded_config.token_compression:
        compression = loaded_config.token_compression
    if set(loaded_config.heads) == set(heads) and compression == loaded_config.token_compression:
        return loaded, loaded_config
    # the folder carries heads this stage does not train (e.g. Stella's 2_Dense_*): rebuild without them;
    # or model.token_compression adds a (fresh) compressor / sets the folder's threshold and ratio
    dropped = sorted(set(loaded_config.heads) - set(heads))
    if dropped:
        log.info("model %s carries heads %s not used by this stage; dropped", path, dropped)
    student_config = dataclasses.replace(loaded_config, heads=dict(heads), token_compression=compression)
    model = JasperStudent(student_config, rngs=rngs)
    assign_params(model, flat_params(loaded))
    return model, student_config


def build_stage_model(
    run: RunSettings, stage: StageSettings, paths: DataPaths, saved: dict[str, Any] | None
) -> StageModel:
    """The stage's student on the host (its heads; stage 4 adds the vision tower and the image markers)."""
    seed = run.seed + stage.number
    with nnx.use_eager_sharding(False):
        model, student_config = build_student(run, stage.heads, seed, saved, stage.token_compression)
        if student_config.token_compression is not None and run.data.packing:
            raise TrainingError(
                "config fields data.packing=true and a student with token compression (model.token_compression "
                "or a JasperV2Encoder folder) cannot be combined yet; set data.packing=false"
            )
        if not stage.is_image_stage:
            return StageModel(model, student_config)
        tokenizer_folder = run.stage_dir(stage.number) / "tokenizer"
        image_tokenizer, marker_ids = image_lib.stage_tokenizer(paths.tokenizer, tokenizer_folder, run.data.max_length)
        if student_config.vision is None:
            model, student_config = image_lib.add_stage_vision(model, student_config, stage, marker_ids, seed)
        elif tuple(student_config.image_token_ids) != marker_ids:
            raise TrainingError(
                f"stage {stage.number}: the model's image marker ids {student_config.image_token_ids} "
                f"differ from the tokenizer's {marker_ids}"
            )
    return StageModel(model, student_config, tokenizer_folder, image_tokenizer)


def abstract_stage_model(run: RunSettings, stage: StageSettings) -> StageModel:
    """The stage's student from shapes only (no weights are created): compile-check."""
    student_config = student_config_for(run, stage.heads, None, stage.token_compression)
    if stage.is_image_stage:  # the tower's shapes from the config or its folder
        student_config = image_lib.abstract_vision_student_config(student_config, stage)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: JasperStudent(student_config, rngs=nnx.Rngs(params=0, dropout=1)))
    return StageModel(model, student_config)


def check_heads(stage: StageSettings, teacher_dim: int | None) -> None:
    """The full head must be as wide as the teacher store (text stages); image stages cannot fit heads."""
    if stage.is_image_stage:
        if stage.head_init == "fit":
            raise TrainingError(
                f"stage {stage.number} trains on images: head_init='fit' needs teacher vectors; use 'random'"
            )
        return
    full_head = stage.objective.full_head
    if stage.heads.get(full_head) != teacher_dim:
        raise TrainingError(
            f"stage {stage.number}: head {full_head!r} has {stage.heads.get(full_head)} dims but the teacher store "
            f"has {teacher_dim}; set stages.stage{stage.number}.heads.{full_head}={teacher_dim}"
        )


# ------------------------------------------------------------------------------------------------- step


def stage_objective(stage: StageSettings):
    """`(objective, forward)`: texts against teacher vectors, or (stage 4) images against their captions."""
    if stage.is_image_stage:
        return image_lib.image_objective(stage.objective), image_lib.image_caption_forward
    if stage.is_pair_stage:
        from jasper_jax.train import pair_stage

        return pair_stage.pair_stage_objective(stage.objective), pair_stage.pair_forward
    return step_lib.text_objective(stage.objective), step_lib.text_forward


def build_stage_step(run: RunSettings, stage: StageSettings, built: StageModel, mesh: jax.sharding.Mesh) -> StageStep:
    """Split the model by the stage's trainable regexes, make its optimizer, shardings and jitted step."""
    try:
        patterns = optimizer_lib.trainable_patterns(
            stage.trainable, stage.trainable_last_layers, built.config.encoder.num_hidden_layers
        )
        graphdef, trainable, frozen, rest = optimizer_lib.split_model(built.model, patterns)
    except ValueError as error:
        raise TrainingError(f"stage {stage.number}: {error}") from None
    check_micro_batch_size(stage, mesh)
    tx, schedule = optimizer_lib.make_optimizer(run.optimizer, stage.lr, stage.steps)
    abstract_state = jax.eval_shape(lambda p: step_lib.init_train_state(p, tx), trainable)
    abstract_frozen = jax.eval_shape(lambda f: f, frozen)
    batch_keys = image_lib.IMAGE_BATCH_KEYS if stage.is_image_stage else text_batch_keys(run, built.config)
    if stage.is_pair_stage:
        from jasper_jax.train.pair_stage import pair_batch_keys

        batch_keys = pair_batch_keys(built.config)
    rules = sharding_lib.rules_from_config(run.sharding_rules)

    def make_shardings(state, frozen):
        return step_lib.step_shardings(mesh, rules, state, frozen, rest, batch_keys=batch_keys)

    shardings = make_shardings(abstract_state, abstract_frozen)
    stacking = layer_stacking.layer_stacking(
        built.config.scan_layers, abstract_state, abstract_frozen, shardings, make_shardings
    )
    objective, forward = stage_objective(stage)
    step_fn = step_lib.jit_train_step(
        step_lib.train_step_fn(
            graphdef,
            tx,
            objective,
            schedule,
            deterministic=built.config.vector_dropout == 0,
            activation_sharding=sharding_lib.activation_sharding(mesh, run.activation_sharding),
            forward=forward,
            objective_sharding=sharding_lib.replicated(mesh),  # the losses run locally on every device
            micro_batch_size=stage.micro_batch_size,
            batch_shards=batch_size_divisor(mesh),
        ),
        stacking.shardings,
        mesh,
    )
    return StageStep(
        graphdef,
        trainable,
        frozen,
        rest,
        patterns,
        tx,
        schedule,
        abstract_state,
        abstract_frozen,
        shardings,
        step_fn,
        stacking,
    )


# ------------------------------------------------------------------------------------------------ input


def text_batch_keys(run: RunSettings, config: StudentConfig | None = None) -> tuple[str, ...]:
    """The arrays of a text stage's batch: padded, or packed rows with their layout (`data.packing`);
    a student with a token compressor (`config`) also gets each batch's `compressed_mask`."""
    if run.data.packing:
        return step_lib.PACKED_BATCH_KEYS
    if config is not None and config.token_compression is not None:
        return step_lib.BATCH_KEYS + ("compressed_mask",)
    return step_lib.BATCH_KEYS


def compression_sampling(run: RunSettings, stage: StageSettings, config: StudentConfig):
    """The training ratio of a student with a token compressor (`pipeline.CompressionSampling`): sampled per
    step from `model.token_compression.train_ratio` (low, high), else the compressor's own ratio; None
    without a compressor."""
    compression = config.token_compression
    if compression is None:
        return None
    from jasper_jax.data.pipeline import CompressionSampling

    low, high = run.model.train_ratio_range() or (compression.ratio, compression.ratio)
    return CompressionSampling(compression.threshold, low, high, seed=run.seed * 1009 + stage.number)


def check_micro_batch_size(stage: StageSettings, mesh: jax.sharding.Mesh) -> None:
    """GradCache's micro-batches: m divides the global batch, the data-parallel size divides m, texts only.
    With `data.packing` m counts packed rows; the same checks hold (the pipeline makes the row buckets
    multiples of m, `text_iterator`)."""
    micro = stage.micro_batch_size
    if not micro:
        return
    field = f"stages.stage{stage.number}.micro_batch_size"
    divisor = batch_size_divisor(mesh)
    if stage.is_image_stage or stage.is_pair_stage:
        kind = "images" if stage.is_image_stage else "pairs"
        raise TrainingError(f"stage {stage.number} trains on {kind}: {field} (GradCache) is for text stages; use 0")
    if micro < 0 or stage.batch_size % micro:
        raise TrainingError(
            f"stage {stage.number}: {field}={micro} does not divide batch_size {stage.batch_size}; "
            "choose a divisor (0 = off)"
        )
    if micro % divisor:
        raise TrainingError(
            f"stage {stage.number}: {field}={micro} is not divisible by the {divisor} devices of the mesh's "
            "batch axes (data x fsdp); every micro-batch is split over them"
        )


def stage_start_row(run: RunSettings, stage: StageSettings, rows: int) -> int:
    """Where stage `stage` starts reading the store's row stream (`stage.data_start`).

    "beginning": 0. A row number: that row (< `rows`). "continue": the position after the last row the
    previous configured stage read: its own start plus its steps x batch_size, accumulated over earlier
    "continue" stages. Positions past the end of an epoch go on into the next one, as the pipeline's repeat
    does (in the store's order that is the position modulo `rows`; with `data.shuffle_seed`, the next
    epoch's shuffle)."""
    start = stage.data_start  # its combination with the other stages: settings.check_data_starts
    if start == "beginning":
        return 0
    if isinstance(start, int):
        if start >= rows:
            raise TrainingError(
                f"config field stages.stage{stage.number}.data_start={start}: the teacher store has {rows} rows; "
                f"choose 0-{rows - 1}"
            )
        return start
    previous = run.stages[max(number for number in run.stages if number < stage.number)]
    return stage_start_row(run, previous, rows) + previous.steps * previous.batch_size


def text_iterator(
    run: RunSettings,
    paths: DataPaths,
    batch_size: int,
    mesh,
    shuffle_seed: int | None,
    packing: bool = False,
    start_row: int = 0,
    micro_batch_size: int | None = None,
    compression=None,
):
    """The Grain iterator of global text batches over the teacher store, as `data` says (`packing` for the
    training batches of a text stage; the head fit reads padded batches); `start_row` as `stage_start_row`;
    `micro_batch_size` (GradCache, packed): the packed row counts are multiples of it; `compression`
    (`compression_sampling`): batches with a `compressed_mask` at a per-step ratio."""
    from jasper_jax.data.pipeline import make_train_iterator

    data = run.data
    return make_train_iterator(
        paths.store,
        paths.tokenizer,
        global_batch_size=batch_size,
        mesh=mesh,
        max_length=data.max_length,
        shuffle_seed=shuffle_seed,
        prompt=data.prompt,
        teachers=list(data.teachers) if data.teachers else None,
        teacher_transforms=data.teacher_transforms,
        worker_threads=data.worker_threads,
        prefetch=data.prefetch,
        packing=packing,
        worker_processes=data.worker_processes,
        start_row=start_row,
        micro_batch_rows=micro_batch_size,
        compression=compression,
    )


def stage_input(run: RunSettings, stage: StageSettings, paths: DataPaths, mesh, built: StageModel):
    """The stage's iterator of global batches: teacher-store texts, or (stage 4) image-caption pairs.

    A batch_size the mesh's batch devices do not divide is padded with masked rows
    (`jasper_jax.data.pipeline.padded_batch_size`); the losses and the tokens/FLOPs metrics see the real rows."""
    if stage.is_pair_stage:
        from jasper_jax.train.pair_stage import pair_iterator

        compression = None if built is None else compression_sampling(run, stage, built.config)
        return pair_iterator(run, stage, paths, mesh, compression)
    if not stage.is_image_stage:
        from jasper_jax.data.store import TeacherStore

        start_row = stage_start_row(run, stage, len(TeacherStore(paths.store)))
        return text_iterator(
            run,
            paths,
            stage.batch_size,
            mesh,
            run.data.shuffle_seed,
            packing=run.data.packing,
            start_row=start_row,
            micro_batch_size=stage.micro_batch_size,
            compression=None if built is None else compression_sampling(run, stage, built.config),
        )
    from jasper_jax.data.images import make_image_caption_iterator

    return make_image_caption_iterator(
        image_lib.prepare_images(run, stage),
        built.image_tokenizer,
        image_size=built.config.vision.image_size,
        image_tokens=built.config.image_tokens,
        global_batch_size=stage.batch_size,
        mesh=mesh,
        split=stage.images.split,
        shuffle_seed=run.seed,
        prompt=run.data.prompt,
        worker_threads=run.data.worker_threads,
        prefetch=run.data.prefetch,
    )


def abstract_stage_batch(
    run: RunSettings, stage: StageSettings, built: StageModel, step: StageStep, batch_size: int, length: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """The stage's batch as sharded ShapeDtypeStructs (compile-check): what `stage_input` yields (packed:
    the largest row bucket, as many rows as texts); `batch_size` rounded up as the pipeline pads it."""
    from jasper_jax.data.pipeline import padded_batch_size

    batch_size = padded_batch_size(batch_size, step.shardings.batch["row_mask"].mesh)
    if stage.is_image_stage:
        shapes = image_lib.abstract_image_batch(built.config, batch_size, length)
    elif stage.is_pair_stage:
        from jasper_jax.train.pair_stage import abstract_pair_batch

        shapes = abstract_pair_batch(run, stage, batch_size, length, compression_sampling(run, stage, built.config))
    elif run.data.packing:
        rows = (batch_size, length)
        shapes = {key: (rows, jnp.int32) for key in ("input_ids", "attention_mask", "segment_ids", "positions")}
        shapes.update(
            text_row=((batch_size,), jnp.int32),
            text_segment=((batch_size,), jnp.int32),
            teacher=((batch_size, stage.heads[stage.objective.full_head]), jnp.float32),
            row_mask=((batch_size,), jnp.bool_),
        )
    else:
        shapes = {
            "input_ids": ((batch_size, length), jnp.int32),
            "attention_mask": ((batch_size, length), jnp.int32),
            "teacher": ((batch_size, stage.heads[stage.objective.full_head]), jnp.float32),
            "row_mask": ((batch_size,), jnp.bool_),
        }
        sampling = compression_sampling(run, stage, built.config)
        if sampling is not None:  # the largest compressed bucket: every text at the highest training ratio
            from jasper_jax.data.tokenization import bucket_length
            from jasper_jax.models.token_compression import compressed_length

            compressed = compressed_length(sampling.high, sampling.threshold, length)
            shapes["compressed_mask"] = ((batch_size, bucket_length(max(compressed, 1), length)), jnp.int32)
    return {
        key: jax.ShapeDtypeStruct(shape, dtype, sharding=step.shardings.batch[key])
        for key, (shape, dtype) in shapes.items()
    }
