"""The stage loop: stages in order under `workdir`, each from the previous stage's final checkpoint.

For stage N (`workdir/stage{N}/`):
1. its own latest complete checkpoint, if any, is resumed (the same command after a crash continues the
   same trajectory: model, optimizer, data position and metrics.jsonl); a stage whose final checkpoint
   exists is skipped; either is refused when the checkpoint ran with other settings (`run_settings`);
2. otherwise the stage's model (its heads) is built and filled from the previous stage's final
   checkpoint (`init_from="previous"`) or from `model.source` (`init_from="model"`); heads new in this
   stage are initialised as `head_init` says;
3. the parameters are split into trainable and frozen by the stage's regexes; the step is jitted with
   the shardings of the mesh; the data iterator yields global batches (`stage_build`);
4. every `checkpoint.every` steps and at the end an asynchronous checkpoint is written; process 0 shows a
   progress bar and writes metrics.jsonl and TensorBoard events; after `max_consecutive_nonfinite`
   skipped (non-finite) steps in a row the run stops, leaving the last good checkpoint as it was;
5. on SIGTERM (preemption) every process stops at one agreed step, saves a checkpoint there and the run
   exits with `EXIT_REQUEUE` (75; `preemption`); a slow step is named and a step that never completes
   ends the run (`watchdog`).

`train()` raises `TrainingError` for anything the user can fix; `jasper_jax.cli` turns it into an exit code.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jasper_jax.errors import (  # noqa: F401 (re-exported)
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_HANG,
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_REQUEUE,
)
from jasper_jax.models.params import fill_state, state_to_tree, tree_paths
from jasper_jax.train import checkpoint as checkpoint_lib
from jasper_jax.train import compile_cache, distributed, preemption, run_settings, watchdog
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import RunSettings, StageSettings, TrainingError, settings_from_config
from jasper_jax.train.stage_build import (
    DataPaths,
    StageModel,
    StageStep,
    build_stage_model,
    build_stage_step,
    check_heads,
    model_source_path,
    stage_input,
    text_iterator,
)

VERSION = "0.1.0"


# ------------------------------------------------------------------------------------------------- data


def prepare_data(run: RunSettings) -> DataPaths:
    """The store and tokenizer folders; a generated store (tiny runs) is written by process 0 first."""
    data = run.data
    if data.generate.enabled:
        from jasper_jax.train.synthetic import generate_tiny_data

        folder = run.workdir / "data"
        if distributed.is_main_process():
            generate = data.generate
            generate_tiny_data(
                folder, rows=generate.rows, words=generate.words, teacher_dims=generate.teacher_dims, seed=generate.seed
            )
        distributed.barrier("jasper_generate_data")
        return DataPaths(store=folder / "store", tokenizer=Path(data.tokenizer or folder / "tokenizer"))
    if not data.store:
        raise TrainingError("config.data.store is empty: set --config.data.store=PATH to a teacher store")
    source = model_source_path(run)
    if not data.tokenizer and source is None:
        raise TrainingError("config.data.tokenizer is empty and the model is random: set a tokenizer folder")
    return DataPaths(store=Path(data.store), tokenizer=Path(data.tokenizer or source))


def check_teacher_store(run: RunSettings, paths: DataPaths) -> None:
    """Refuse to start on a broken store (misaligned texts/vectors, wrong dtype or size, NaN rows).

    The full check runs once per store version (`check.check_store_once`, marker under
    `workdir/store_checks/`), on process 0; the other processes then check sizes and row counts only,
    or learn from the missing marker that process 0's check failed."""
    from jasper_jax.data.check import check_store_once, passed_marker

    teachers = list(run.data.teachers) if run.data.teachers else None
    marker_dir, verify = run.workdir.absolute() / "store_checks", run.data.verify_checksums
    main = distributed.is_main_process()
    problems: list[str] = []
    if main:
        began = time.perf_counter()
        problems, full = check_store_once(paths.store, teachers, marker_dir=marker_dir, verify_checksums=verify)
        what = "full check" if full else "sizes and row counts (a full check of this store version passed)"
        print(f"teacher store {paths.store}: {what} in {time.perf_counter() - began:.1f} s", flush=True)
    distributed.barrier("jasper_store_check")
    if not main:
        if passed_marker(paths.store, marker_dir, verify) is None:
            raise TrainingError(
                f"the teacher store {paths.store} did not pass process 0's check (its log lists the problems; "
                f"or {marker_dir} is not on storage every host sees); nothing was trained"
            )
        problems, _ = check_store_once(
            paths.store, teachers, marker_dir=marker_dir, verify_checksums=verify, write_marker=False
        )
    if problems:
        listing = "\n  - ".join(problems)
        raise TrainingError(
            f"the teacher store {paths.store} has problems; nothing was trained:\n  - {listing}\n"
            "Fix or rebuild it (`jasper-jax teachers check` shows the same list) and rerun."
        )


def store_dim(paths: DataPaths, data=None) -> int:
    """The teacher width the training sees: the selected teachers after their transforms (`data` settings)."""
    from jasper_jax.data.store import TeacherStore

    if data is None:
        return int(TeacherStore(paths.store).dim)
    teachers = list(data.teachers) if data.teachers else None
    return int(TeacherStore(paths.store, teachers, data.teacher_transforms).dim)


# ------------------------------------------------------------------------------------------- checkpoints


def make_checkpointer(run: RunSettings, number: int) -> checkpoint_lib.StageCheckpointer:
    return checkpoint_lib.StageCheckpointer(
        run.stage_dir(number) / "checkpoints",
        every=run.checkpoint.every,
        keep=run.checkpoint.keep,
        async_save=run.checkpoint.async_save,
    )


def _check_settings_unchanged(run: RunSettings, number: int, checkpointer, step: int) -> None:
    """Refuse to resume or skip stage `number` when its checkpoint ran with other trajectory settings
    (`run_settings`): the rerun would keep a stage trained under the old ones."""
    saved = checkpointer.metadata(step).get("config")
    if not saved:  # written before checkpoints recorded their config
        return
    changed = run_settings.differences(saved, run.config_json, number)
    if changed:
        checkpointer.close()
        raise TrainingError(
            f"stage {number}: {checkpointer.directory} (step {step}) was trained with other settings than this "
            f"run's: " + "; ".join(changed) + f". Use another workdir, rerun with the recorded settings, or "
            f"delete {run.stage_dir(number)} and the later stages' folders to train them again."
        )


@dataclasses.dataclass
class StageStart:
    """Where a stage starts: its own checkpoint (`resume_step`), the previous stage's final one, or the model."""

    saved_student: dict[str, Any] | None = None  # the StudentConfig dict the model is rebuilt from
    resume_step: int | None = None
    previous: checkpoint_lib.StageCheckpointer | None = None
    previous_step: int | None = None


def stage_start(run: RunSettings, stage: StageSettings, checkpointer, latest: int | None) -> StageStart:
    """Resume from the stage's own `latest` checkpoint, or start from the previous configured stage's final
    checkpoint, or from the model."""
    number = stage.number
    if latest is not None:
        return StageStart(checkpointer.metadata(latest)["student_config"], resume_step=latest)
    if stage.init_from == "model":
        return StageStart()
    earlier = [n for n in sorted(run.stages) if n < number]
    if not earlier:
        raise TrainingError(f"stage {number} has init_from='previous' but no earlier stage is configured")
    previous = earlier[-1]
    checkpointer = make_checkpointer(run, previous)
    step = checkpointer.latest_step()
    wanted = run.stages[previous].steps
    if step != wanted:
        checkpointer.close()
        raise TrainingError(
            f"stage {number} starts from stage {previous}'s final checkpoint (step {wanted}) but "
            f"{checkpointer.directory} has {'none' if step is None else f'only step {step}'}: run stage "
            f"{previous} first (--stages {previous},{number}) or set stages.stage{number}.init_from='model'"
        )
    _check_settings_unchanged(run, previous, checkpointer, step)  # stage `number` would start from it
    return StageStart(checkpointer.metadata(step)["student_config"], previous=checkpointer, previous_step=step)


# ------------------------------------------------------------------------------------------ initial state


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


def from_previous_stage(stage: StageSettings, start: StageStart, step: StageStep):
    """`(trainable, frozen, heads_now, new_heads)`: the parameters the previous stage's final checkpoint has,
    and the heads it lacks started as `head_init` says."""
    shardings = step.shardings
    full = nnx.merge_state(step.trainable, step.frozen)
    loaded = start.previous.restore_params(
        start.previous_step, full, nnx.merge_state(shardings.state.params, shardings.frozen)
    )
    start.previous.close()
    loaded_paths = tree_paths(loaded)
    new_heads = {h: d for h, d in stage.heads.items() if ("heads", h, "kernel") not in loaded_paths}
    heads_now = {**state_to_tree(full).get("heads", {}), **loaded.get("heads", {})}
    overrides = init_new_heads({"heads": heads_now}, new_heads, stage.head_init)
    trainable = fill_state(fill_state(step.trainable, loaded), overrides)
    frozen = fill_state(fill_state(step.frozen, loaded), overrides)
    if distributed.is_main_process():
        print(
            f"stage {stage.number}: starting from {start.previous.directory}/{start.previous_step}"
            + (f"; new heads {sorted(new_heads)} ({stage.head_init})" if new_heads else ""),
            flush=True,
        )
    return trainable, frozen, heads_now, new_heads


def fit_heads(
    run: RunSettings,
    stage: StageSettings,
    step: StageStep,
    trainable,
    frozen,
    paths: DataPaths,
    mesh,
    new_heads: dict[str, int],
    existing: dict[str, Any],
):
    """`(trainable, frozen)` with the new heads set by `jasper_jax.train.head_fit` from the stage's
    `head_fit_batches` batches (drawn in another order than the training batches)."""
    from jasper_jax.train import head_fit

    number, count, teacher_dim = stage.number, stage.head_fit_batches, store_dim(paths, run.data)
    main = distributed.is_main_process()
    if main:
        print(f"stage {number}: fitting heads {sorted(new_heads)} on {count} batches (head_init='fit')", flush=True)
    began = time.perf_counter()
    batches = text_iterator(run, paths, stage.batch_size, mesh, run.seed + 7919 * number)
    shardings = step.shardings
    states = (
        step_lib.place(trainable, shardings.state.params),
        step_lib.place(frozen, shardings.frozen),
        step_lib.place(step.rest, shardings.rest),
    )
    try:
        statistics = head_fit.feature_statistics(step.graphdef, states, batches, count)
        ridges = head_fit.validated_ridge(statistics)
        fitted = head_fit.fitted_heads(statistics, new_heads, teacher_dim, existing, ridge=ridges)
    except ValueError as error:
        raise TrainingError(f"stage {number}: {error}") from error
    if main:
        wide = teacher_dim in new_heads.values()
        print(
            f"stage {number}: heads fitted on {int(statistics['rows'])} texts in {time.perf_counter() - began:.0f} s"
            + (
                f" (ridges per output column, chosen on held-back batches: {head_fit.describe_ridges(ridges)})"
                if wide
                else ""
            ),
            flush=True,
        )
    overrides = {"heads": fitted}
    return fill_state(trainable, overrides), fill_state(frozen, overrides)


def initial_state(
    run: RunSettings,
    stage: StageSettings,
    start: StageStart,
    step: StageStep,
    checkpointer,
    iterator,
    paths: DataPaths,
    mesh,
):
    """`(state, frozen)` placed on the step's shardings: restored (the iterator set to its saved position),
    or from the previous stage or the model with the new heads initialised."""
    shardings = step.shardings
    if start.resume_step is not None:
        state, frozen, _ = checkpointer.restore(
            start.resume_step, step.abstract_state, shardings.state, step.abstract_frozen, shardings.frozen, iterator
        )
        if distributed.is_main_process():
            print(
                f"stage {stage.number}: resuming from checkpoint {start.resume_step} in {checkpointer.directory}",
                flush=True,
            )
        return state, frozen
    if start.previous is not None:
        trainable, frozen, heads_now, new_heads = from_previous_stage(stage, start, step)
    else:  # from the model source: every head counts as new
        trainable, frozen, heads_now, new_heads = step.trainable, step.frozen, {}, dict(stage.heads)
    if stage.head_init == "fit" and new_heads:
        trainable, frozen = fit_heads(run, stage, step, trainable, frozen, paths, mesh, new_heads, heads_now)
    state = jax.jit(lambda p: step_lib.init_train_state(p, step.tx), out_shardings=shardings.state)(
        step_lib.place(trainable, shardings.state.params)
    )
    return state, step_lib.place(frozen, shardings.frozen)


def stage_metadata(
    run: RunSettings, stage: StageSettings, paths: DataPaths, built: StageModel, step: StageStep
) -> dict[str, Any]:
    """What each checkpoint records: the config as run (data paths resolved: export reads them), the student."""
    config = json.loads(json.dumps(run.config_json))
    tokenizer = built.tokenizer_folder or paths.tokenizer
    config["data"].update(store=str(paths.store.absolute()), tokenizer=str(Path(tokenizer).absolute()))
    return {
        "stage": stage.number,
        "version": VERSION,
        "config": config,
        "student_config": built.config.to_dict(),
        "trainable": list(step.patterns),
    }


# ------------------------------------------------------------------------------------------------ stage


@dataclasses.dataclass
class RunGuards:
    """What watches a whole run across its stages: the preemption notice and the hang guard."""

    preemption: preemption.PreemptionWatch
    hang: watchdog.HangGuard

    @classmethod
    def start(cls, run: RunSettings) -> RunGuards:
        return cls(preemption.PreemptionWatch(), watchdog.HangGuard(run.watchdog.hang_timeout_s, jax.process_index()))

    def close(self) -> None:
        self.preemption.close()
        self.hang.close()


def run_stage(
    run: RunSettings, number: int, mesh: jax.sharding.Mesh, paths: DataPaths, guards: RunGuards | None = None
) -> None:
    """Train one stage to its last step (resuming it), or skip it when its final checkpoint exists."""
    stage = run.stage(number)
    checkpointer = make_checkpointer(run, number)
    latest = checkpointer.latest_step()
    if latest is not None:
        _check_settings_unchanged(run, number, checkpointer, latest)
        if latest >= stage.steps:
            if distributed.is_main_process():
                print(
                    f"stage {number}: complete (checkpoint {latest} in {checkpointer.directory}); skipped", flush=True
                )
            checkpointer.close()
            return
    start = stage_start(run, stage, checkpointer, latest)
    built = build_stage_model(run, stage, paths, start.saved_student)
    check_heads(stage, None if stage.is_image_stage else store_dim(paths, run.data))
    step = build_stage_step(run, stage, built, mesh)
    iterator = stage_input(run, stage, paths, mesh, built)
    state, frozen = step.stacking.to_step(*initial_state(run, stage, start, step, checkpointer, iterator, paths, mesh))
    rest = step_lib.place(step.rest, step.shardings.rest)
    metadata = stage_metadata(run, stage, paths, built, step)
    throughput = stage_throughput(run, stage, built, step)
    train_loop(
        run,
        stage,
        checkpointer,
        step.step_fn,
        state,
        frozen,
        rest,
        iterator,
        metadata,
        throughput,
        guards,
        to_checkpoint=step.stacking.to_checkpoint,
    )


class MetricsWriter:
    """metrics.jsonl (one JSON per logged step), timing.jsonl (its speed: tokens/s, TFLOP/s, MFU) and
    TensorBoard events, on process 0 only.

    metrics.jsonl holds what the trajectory determines (losses, lr, tokens, model FLOPs): a resumed run
    writes the same lines as an uninterrupted one. Wall-clock figures go to timing.jsonl, never there."""

    def __init__(self, directory: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = directory / "metrics.jsonl"
        self.timing_path = directory / "timing.jsonl"
        self.writer = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.timing_path):
            if path.exists():  # resumed: drop what was logged after the checkpoint we resume from
                kept = [
                    line
                    for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step
                ]
                path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=start_step + 1)

    def write(self, record: dict[str, Any], timing: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        with self.timing_path.open("a") as file:
            file.write(json.dumps({"step": record["step"], **timing}) + "\n")
        for key, value in {**record, **timing}.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# step metrics used by the loop that are not written to metrics.jsonl
_LOOP_ONLY_METRICS = ("nonfinite_consecutive", "token_squares")


def _to_record(step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    for key in sorted(metrics):
        if key in _LOOP_ONLY_METRICS:
            continue
        value = np.asarray(metrics[key])
        if value.dtype == bool:
            record[key] = bool(value)
        elif np.issubdtype(value.dtype, np.integer):
            record[key] = int(value)
        else:
            record[key] = float(value)
    return record


_told_no_mfu = False


class Throughput:
    """Speed between logged steps: tokens/s, model FLOPs (`jasper_jax.train.flops`), TFLOP/s and MFU.

    `flop_model` None (an image stage) logs tokens/s only; `peak_tflops` None (unknown device, no
    `hardware.peak_tflops`) logs no MFU, said once per process."""

    def __init__(self, flop_model, rows: int, peak_tflops: float | None, devices: int, peak_source: str = ""):
        global _told_no_mfu
        self.flop_model, self.rows, self.devices = flop_model, rows, devices
        self.peak_flops = None if peak_tflops is None else peak_tflops * 1e12 * devices
        if flop_model is not None and peak_tflops is None and not _told_no_mfu and distributed.is_main_process():
            print(f"MFU is not reported: {peak_source}; set hardware.peak_tflops (dense TFLOP/s per device)")
            _told_no_mfu = True
        self.reset()

    def reset(self) -> None:
        self.tokens, self.flops, self.clock = 0, 0.0, time.perf_counter()

    def step_flops(self, metrics: dict[str, Any]) -> float | None:
        if self.flop_model is None or "token_squares" not in metrics:
            return None
        tokens = float(metrics["tokens"])  # input tokens; the encoder's differ behind a token compressor
        encoder_tokens = float(metrics.get("encoder_tokens", tokens))
        return self.flop_model.total(encoder_tokens, float(metrics["token_squares"]), self.rows, input_tokens=tokens)

    def add(self, metrics: dict[str, Any], flops: float | None) -> None:
        self.tokens += int(metrics["tokens"])
        self.flops += flops or 0.0

    def timing(self) -> dict[str, float]:
        """The figures since the last `reset` (then reset)."""
        elapsed = max(time.perf_counter() - self.clock, 1e-9)
        timing = {"tokens_per_second": self.tokens / elapsed}
        if self.flop_model is not None:
            timing["tflops_per_second"] = self.flops / elapsed / 1e12
            if self.peak_flops:
                timing["mfu"] = self.flops / elapsed / self.peak_flops
        self.reset()
        return timing


def stage_throughput(run: RunSettings, stage: StageSettings, built: StageModel, step: StageStep) -> Throughput:
    """The stage's `Throughput`: FLOPs from the student config and the trainable parameters."""
    from jasper_jax.train import flops as flops_lib

    model = flops_lib.step_flop_model(built.config, flops_lib.trainable_paths(step.trainable))
    peak, source = flops_lib.resolve_peak_tflops(run.hardware.peak_tflops)
    return Throughput(model, stage.batch_size, peak, jax.device_count(), source)


def train_loop(
    run: RunSettings,
    stage: StageSettings,
    checkpointer,
    step_fn,
    state,
    frozen,
    rest,
    iterator,
    metadata: dict[str, Any],
    throughput: Throughput | None = None,
    guards: RunGuards | None = None,
    to_checkpoint=None,
) -> None:
    """Steps from the state's step to the stage's last, checkpointing as configured; metrics on process 0.

    `to_checkpoint(state, frozen)`: the step's states in a checkpoint's per-layer layout
    (`LayerStacking.to_checkpoint`; default: they are already).

    The host never waits for the device between two steps: step N's metrics are fetched after step N+1 is
    dispatched (one step late), so the device runs N+1 while the host logs N and prepares the next batch.
    At a checkpoint step (and the last) the metrics are fetched first: the checkpoint copies the state to
    the host anyway, and a step that ends the run (too many non-finite steps) is never saved.

    `guards` (default: started here, for this stage only): at the step where the preemption notice is
    agreed, the state is saved and `TrainingError(..., EXIT_REQUEUE)` raised; every completed step beats
    the hang guard and is timed by the slow-step monitor."""
    from tqdm import tqdm

    to_checkpoint = to_checkpoint or (lambda state, frozen: (state, frozen))
    number, steps, start = stage.number, stage.steps, int(state.step)
    main = distributed.is_main_process()
    writer = MetricsWriter(run.stage_dir(number), start, main)
    throughput = throughput or Throughput(None, stage.batch_size, None, jax.device_count())
    log_every = max(1, run.log_every)
    bar = tqdm(
        total=steps,
        initial=start,
        desc=f"stage {number}",
        disable=not (main and run.progress),
        dynamic_ncols=True,
        file=sys.stdout,
    )
    last_saved = checkpointer.latest_step()
    poisoned = set(run.debug_nonfinite_steps)
    own_guards = guards is None
    guards = guards or RunGuards.start(run)
    slow = watchdog.SlowStepMonitor(run.watchdog.factor, run.watchdog.warmup_steps, jax.process_index())

    def report(step: int, metrics) -> None:
        """Log step `step`'s metrics (blocks until that step is done); stop after too many bad steps."""
        metrics = jax.device_get(metrics)
        warning = slow.step_done(step)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        guards.hang.beat()
        flops = throughput.step_flops(metrics)
        throughput.add(metrics, flops)
        bad_streak = int(metrics["nonfinite_consecutive"])
        if step % log_every == 0 or step == steps or bad_streak:
            record = _to_record(step, metrics)
            if flops is not None:
                record["model_flops"] = flops
            timing = throughput.timing()
            writer.write(record, timing)
            speed = timing["tokens_per_second"]
            bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}", tok_s=f"{speed:,.0f}")
        bar.update(1)
        if bad_streak >= run.max_consecutive_nonfinite:
            checkpointer.wait()
            raise TrainingError(
                f"stage {number} stopped at step {step}: {bad_streak} non-finite steps in a row (loss or "
                f"gradient NaN/inf; those updates were skipped). The last good checkpoint is "
                f"{'none' if last_saved is None else last_saved} in {checkpointer.directory}, left as it was. "
                "Check the teacher store (`jasper-jax teachers check`) and the learning rate, then rerun "
                "the same command to resume from that checkpoint.",
                EXIT_NONFINITE,
            )

    pending = None  # (step, metrics on the device) not yet logged
    try:
        for step in range(start + 1, steps + 1):
            batch = next(iterator)
            if step in poisoned:
                batch = dict(batch, teacher=batch["teacher"] * float("inf"))  # the losses give NaN
            state, metrics = step_fn(state, frozen, rest, batch)
            if pending is not None:
                report(*pending)  # the previous step's, while this one runs
            pending = (step, metrics)
            debug = run.debug_signal
            preemption.send_debug_signal(debug.name, step, debug.step, debug.process)
            preempted = guards.preemption.reached()
            if checkpointer.should_save(step) or step == steps or preempted:
                report(*pending)
                pending = None
                checkpointer.save(step, *to_checkpoint(state, frozen), iterator, metadata)
                last_saved = step
                slow.restart_clock()
            if preempted:
                guards.hang.disarm()
                checkpointer.wait()
                distributed.barrier("jasper_preempted")  # no process exits while another still writes
                raise TrainingError(
                    f"stage {number}: preempted (SIGTERM) at step {step}: checkpoint {step} saved in "
                    f"{checkpointer.directory}; rerun the same command to resume (exit code {EXIT_REQUEUE}: "
                    "requeue)",
                    EXIT_REQUEUE,
                )
        if pending is not None:
            report(*pending)
        guards.hang.disarm()
        checkpointer.wait()
    finally:
        guards.hang.disarm()
        if own_guards:
            guards.close()
        bar.close()
        writer.close()
        checkpointer.close()
    if main:
        print(f"stage {number}: done ({steps} steps); checkpoint in {checkpointer.directory}", flush=True)


# -------------------------------------------------------------------------------------------------- run


def train(config: ml_collections.ConfigDict | RunSettings, stages: list[int] | None = None) -> None:
    """Run `stages` (default: every configured stage) in order; raises TrainingError for what the user can fix."""
    run = config if isinstance(config, RunSettings) else settings_from_config(config)
    numbers = stages or sorted(run.stages)
    for number in numbers:
        run.stage(number)  # an unknown stage is refused before anything runs
    compile_cache.enable(run.compilation_cache_dir)
    settings = run.distributed
    distributed.initialize(
        settings.coordinator_address or None,
        settings.num_processes or None,
        settings.process_id if settings.process_id >= 0 else None,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        initialization_timeout_s=settings.initialization_timeout_s,
    )
    guards = RunGuards.start(run)  # a SIGTERM from here on stops at the next step boundary
    try:
        try:
            mesh = make_mesh(run.mesh)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        paths = prepare_data(run)
        check_teacher_store(run, paths)
        for number in numbers:
            run_stage(run, number, mesh, paths, guards)
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() > 1:
            watchdog.end_after_failed_computation(error, jax.process_index(), jax.process_count())
        raise
    finally:
        guards.close()
