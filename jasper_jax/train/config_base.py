"""The ConfigDict every training config starts from (configs/*.py call `base_config()` and override).

The fields, their types and defaults are those of `jasper_jax.train.settings` (and the objective's of
`jasper_jax.losses.ObjectiveConfig`), which `train()` builds from the ConfigDict; the blocks here are made
from those dataclasses, so a default exists once. Top level: `workdir` (each stage writes `stage{N}/`),
`seed`, `mesh` (`data`, `fsdp`, `tensor` sizes, -1 = the rest; `mesh.dcn`: the across-host part),
`sharding_rules` (logical name -> mesh axes), `activation_sharding`, `distributed`, `model`, `data`,
`optimizer`, `objective`, `checkpoint`, `hardware`, `watchdog`, `log_every`, `max_consecutive_nonfinite`,
`progress`, `debug.nonfinite_steps` (tests: steps whose teacher batch is made infinite), `debug.signal` (tests:
a process signals itself after a step: preemption, a lost peer), and `stages.stage{N}` blocks from
`stage(...)` (fields: `settings.StageSettings`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jasper_jax.errors import UserError
from jasper_jax.losses import ObjectiveConfig
from jasper_jax.train import settings
from jasper_jax.train.sharding import DEFAULT_RULES


def stage(**values) -> ml_collections.ConfigDict:
    """One stage block with the defaults of `settings.StageSettings`; `objective` overrides the global one."""
    block = ml_collections.ConfigDict(
        {
            **settings.defaults(settings.StageSettings, exclude=("number", "objective", "vision", "images")),
            "objective": {},
        }
    )
    # "beginning" / "continue" or a row number: one field of either type
    block.data_start = config_dict.FieldReference(block.data_start, field_type=object)
    block.update(values)
    return block


def base_config() -> ml_collections.ConfigDict:
    """The common defaults (official code's optimizer settings, paper's loss weights)."""
    config = ml_collections.ConfigDict()
    config.workdir = "runs/default"
    config.seed = 666
    # `dcn`: the part of each axis that spans hosts or slices (train/mesh.py); all 1: a single-level mesh
    config.mesh = dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=1, fsdp=1, tensor=1))
    config.sharding_rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
    config.activation_sharding = True  # pin encoder-layer inputs to batch sharding (see step.py)
    config.distributed = settings.defaults(settings.DistributedSettings)
    config.model = settings.defaults(settings.ModelSettings)
    for name in ("remat", "scan_layers"):  # names, or booleans as configs wrote them before (true: full / on)
        config.model[name] = config_dict.FieldReference(config.model[name], field_type=object)
    config.data = settings.defaults(settings.DataSettings)
    config.data.shuffle_seed = config_dict.placeholder(int)  # None, typed for --config overrides
    config.data.teachers = config_dict.placeholder(tuple)
    config.optimizer = settings.defaults(settings.OptimizerSettings)
    config.objective = settings.defaults(ObjectiveConfig)
    config.checkpoint = settings.defaults(settings.CheckpointSettings)
    config.hardware = settings.defaults(settings.HardwareSettings)
    config.log_every = 1
    config.max_consecutive_nonfinite = 10
    config.progress = True
    config.watchdog = settings.defaults(settings.WatchdogSettings)
    config.debug = dict(nonfinite_steps=(), signal=settings.defaults(settings.DebugSignal))
    config.compilation_cache_dir = "auto"  # the persistent XLA cache (train/compile_cache.py); "" disables
    config.stages = ml_collections.ConfigDict()
    return config


class ConfigFileError(UserError, FileNotFoundError):
    """The config file is missing or has no get_config()."""


class ConfigFieldError(UserError, KeyError):
    """An override names a field the config does not have."""


class ConfigValueError(UserError, ValueError):
    """An override's value does not parse as the field's type."""


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """`get_config()` of the Python file at `path`, then `key.sub=value` overrides applied in order."""
    import importlib.util
    from pathlib import Path

    file = Path(path)
    if not file.exists():
        raise ConfigFileError(f"config file {path} not found (expected e.g. configs/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"jasper_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"{path} has no get_config() returning an ml_collections.ConfigDict")
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


_NO_FIELD = object()


def _stage_objective_default(config: ml_collections.ConfigDict, parents: list[str], leaf: str):
    """A stage's `objective` holds only the fields it overrides: a field of the global `objective` that the
    stage leaves out can still be set there (`stages.stage4.objective.score_kl_weight=4`); its current value
    is the global one (`_NO_FIELD`: not such a field)."""
    if len(parents) == 3 and parents[0] == "stages" and parents[2] == "objective" and "objective" in config:
        return config.objective.get(leaf, _NO_FIELD)
    return _NO_FIELD


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one `a.b.c=value` override (the value is parsed to the current field's type)."""
    if "=" not in override:
        raise ConfigValueError(f"config override {override!r} must look like key.sub=value")
    key, text = override.split("=", 1)
    key = key.removeprefix("--").removeprefix("config.")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ConfigFieldError(f"config override {override!r}: no field {part!r} (known: {sorted(node.keys())})")
        node = node[part]
    current = node[leaf] if leaf in node else _stage_objective_default(config, parents, leaf)
    if current is _NO_FIELD:
        raise ConfigFieldError(f"config override {override!r}: no field {leaf!r} (known: {sorted(node.keys())})")
    try:
        value = _parse_value(text, current)
    except ValueError as error:
        raise ConfigValueError(f"config override {override!r}: {error}") from None
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
        node[leaf] = ml_collections.ConfigDict(value)
        return
    node[leaf] = value
