"""The settings a stage's trajectory depends on, compared before a rerun resumes or skips the stage.

A rerun of `jasper-jax train` (or `make demo`) resumes an unfinished stage and skips a finished one. Both are
right only if that stage, and every earlier stage its start came from (`init_from="previous"`), are configured
as they were when its checkpoints were written. Otherwise a changed learning rate, loss weight or step count
would be silently ignored for the finished stages, and the report would credit their scores to the new
settings. Each checkpoint's metadata holds the config it ran with (`metadata["config"]`); `differences` lists
what changed, and the trainer refuses to go on with the list.

Left out on purpose: where things are (workdir, store and tokenizer paths), how the run is laid out (mesh,
sharding rules, processes, data loader threads) and what it shows or keeps (progress, logging, checkpoints),
since a rerun may legitimately change them without changing the trajectory.
"""

from __future__ import annotations

from typing import Any

GLOBAL_SETTINGS = (
    "seed",
    "model",
    "optimizer",
    "data.max_length",
    "data.prompt",
    "data.shuffle_seed",
    "data.teachers",
    "data.teacher_transforms",
    "data.generate",
)
# how the step is computed, not what: scanned or unrolled layers and the remat policy give the same
# gradients (to float rounding, tests/models/test_scan_remat.py), so a rerun may change them and resume
COMPUTATION_SETTINGS = ("model.scan_layers", "model.remat")


def _plain(value: Any) -> Any:
    """Tuples as lists (a config's tuples come back from JSON metadata as lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def _fields(value: Any, prefix: str) -> dict[str, Any]:
    """`{prefix.field: value}` one level down (a dict-valued field, such as `heads`, is compared whole)."""
    if isinstance(value, dict):
        return {f"{prefix}.{key}": _plain(item) for key, item in value.items()}
    return {prefix: _plain(value)}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def stage_chain(config: dict[str, Any], number: int) -> list[int]:
    """Stage `number` and the earlier stages its start came from (following `init_from="previous"`)."""
    configured = sorted(int(key.removeprefix("stage")) for key in config.get("stages", {}))
    chain = [number]
    while _lookup(config, f"stages.stage{chain[-1]}.init_from") == "previous" and any(
        n < chain[-1] for n in configured
    ):
        chain.append(max(n for n in configured if n < chain[-1]))
    return chain


def trajectory_settings(config: dict[str, Any], number: int) -> dict[str, Any]:
    """Flat `{dotted key: value}` of what stage `number`'s trajectory depends on, from a JSON-like config.

    Each stage's `objective` is the one it trains with: the global objective updated by the stage's own."""
    settings: dict[str, Any] = {}
    for key in GLOBAL_SETTINGS:
        settings.update(_fields(_lookup(config, key), key))
    for earlier in stage_chain(config, number):
        block = dict(_lookup(config, f"stages.stage{earlier}") or {})
        block.pop("note", None)  # documentation only
        objective = {**(_lookup(config, "objective") or {}), **(block.pop("objective", None) or {})}
        settings.update(_fields(block, f"stages.stage{earlier}"))
        settings.update(_fields(objective, f"stages.stage{earlier}.objective"))
    for key in COMPUTATION_SETTINGS:
        settings.pop(key, None)
    return settings


def differences(saved: dict[str, Any], current: dict[str, Any], number: int) -> list[str]:
    """`"key: X there, Y now"` for each trajectory setting of stage `number` that changed since `saved`.

    Only settings both configs have are compared: a field that a later version added (or removed) is not a
    change the user made."""
    before, now = trajectory_settings(saved, number), trajectory_settings(current, number)
    return [
        f"{key}: {before[key]!r} there, {now[key]!r} now"
        for key in sorted(set(before) & set(now))
        if before[key] != now[key]
    ]
