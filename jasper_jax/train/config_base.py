"""The defaults every training config starts from (configs/*.py call `base_config()` and override).

Schema (all under one `ml_collections.ConfigDict`):
- `workdir`: where each stage writes `stage{N}/` (checkpoints, metrics.jsonl, tensorboard/).
- `seed`; `mesh` (`data`, `fsdp`, `tensor` sizes, -1 = the rest); `sharding_rules` (logical name -> mesh
  axes); `activation_sharding` (pin encoder-layer inputs to the batch axes); `distributed` (explicit `coordinator_address` / `num_processes` / `process_id`; empty = from env).
- `model`: `source` ("random", "minilm" = the offline kit's all-MiniLM-L6-v2, or a folder for
  `jasper_jax.convert.load_model`), `family` + `encoder` (random models), `pooling`, `compute_dtype`,
  `remat`, `vector_dropout`.
- `data`: `store`, `tokenizer` (folder with tokenizer.json; default the model folder), `generate`
  (rows/words/teacher_dims/seed of a generated store: tiny runs), `max_length`, `prompt`, `shuffle_seed`,
  `teachers`, `verify_checksums`, `worker_threads`, `prefetch`.
- `optimizer` (AdamW: b1, b2, eps, weight_decay, clip_norm, warmup_fraction, end_lr_fraction);
  `objective` (`jasper_jax.losses.ObjectiveConfig` fields); `checkpoint` (`every`, `keep`, `async_save`);
  `log_every`; `max_consecutive_nonfinite`; `progress`; `debug.nonfinite_steps` (tests: infinite teachers -> NaN loss).
- `stages.stage{N}`: `trainable` (regexes over parameter paths), `trainable_last_layers` (N: the last N
  encoder layers too), `heads` (name -> dim: the model of this stage), `head_init` ("random";
  "prefix:<head>" = a new head starts as the first d output columns of that head; "fit" = closed-form fit
  on `head_fit_batches` batches of the stage's data, see `jasper_jax.train.head_fit`), `init_from`
  ("previous": the previous configured stage's final checkpoint; "model": `model.source`), `batch_size`,
  `lr`, `steps`, `objective` (overrides of the global objective), `available` (False: not runnable yet).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jasper_jax.train.sharding import DEFAULT_RULES


def stage(**values) -> ml_collections.ConfigDict:
    """One stage block with the defaults filled in."""
    block = ml_collections.ConfigDict(
        dict(
            trainable=(),
            trainable_last_layers=0,
            heads={"fc1": 0},
            head_init="random",
            head_fit_batches=32,
            init_from="previous",
            batch_size=128,
            lr=1e-4,
            steps=1000,
            objective={},
            available=True,
        )
    )
    block.update(values)
    return block


def base_config() -> ml_collections.ConfigDict:
    """The common defaults (official code's optimizer settings, paper's loss weights)."""
    config = ml_collections.ConfigDict()
    config.workdir = "runs/default"
    config.seed = 666
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    config.sharding_rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
    config.activation_sharding = True  # pin encoder-layer inputs to batch sharding (see step.py)
    config.distributed = dict(coordinator_address="", num_processes=0, process_id=-1)
    config.model = dict(
        source="random",
        family="bert",
        encoder={},
        pooling="mean",
        compute_dtype="float32",
        remat=False,
        vector_dropout=0.0,
    )
    config.data = dict(
        store="",
        tokenizer="",
        generate=dict(enabled=False, rows=512, words=200, teacher_dims=(24, 8), seed=0),
        max_length=512,
        prompt="",
        shuffle_seed=config_dict.placeholder(int),
        teachers=config_dict.placeholder(tuple),
        verify_checksums=True,
        worker_threads=2,
        prefetch=4,
    )
    config.optimizer = dict(
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0, warmup_fraction=0.05, end_lr_fraction=0.0
    )
    config.objective = dict(
        full_head="fc1",
        cosine_weight=10.0,
        similarity_weight=200.0,
        relative_similarity_weight=20.0,
        margin=0.015,
        mrl_mode="heads",
        mrl_dims=(),
        reduced_head_weight=1.0,
    )
    config.checkpoint = dict(every=500, keep=3, async_save=True)
    config.log_every = 1
    config.max_consecutive_nonfinite = 10
    config.progress = True
    # testing aids: steps whose teacher batch is made infinite (NaN loss) (exercises the non-finite guard end to end)
    config.debug = dict(nonfinite_steps=())
    config.stages = ml_collections.ConfigDict()
    return config


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """`get_config()` of the Python file at `path`, then `key.sub=value` overrides applied in order."""
    import importlib.util
    from pathlib import Path

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {path} not found (expected e.g. configs/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"jasper_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config() returning an ml_collections.ConfigDict")
    config = module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def _parse_value(text: str, current):
    import ast

    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, str):
        return text
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(current, (tuple, list)) and isinstance(value, (str, int, float)):
        value = (value,)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one `a.b.c=value` override (the value is parsed to the current field's type)."""
    if "=" not in override:
        raise ValueError(f"config override {override!r} must look like key.sub=value")
    key, text = override.split("=", 1)
    key = key.removeprefix("--").removeprefix("config.")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise KeyError(f"config override {override!r}: no field {part!r} (known: {sorted(node.keys())})")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"config override {override!r}: no field {leaf!r} (known: {sorted(node.keys())})")
    current = node[leaf]
    try:
        value = _parse_value(text, current)
    except ValueError as error:
        raise ValueError(f"config override {override!r}: {error}") from None
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
        node[leaf] = ml_collections.ConfigDict(value)
        return
    node[leaf] = value
