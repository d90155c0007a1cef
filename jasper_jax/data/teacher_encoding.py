"""Encode a corpus with one or more teachers into a teacher store, shard by shard, resumably, by many workers.

`encode_store` begins the store (the skeleton manifest, put in place by a hard link so that of workers
starting together one creates it and the others compare their settings with it; then the texts), then for
each teacher each shard of `shard_rows` rows that this worker owns (s = worker mod workers): the shard is
encoded, written to a temporary file, fsynced, renamed, and only then recorded (rows, sha256, dim) in
`<teacher>/NNNNN.json`. The worker that finds every shard recorded (or `merge_store`) verifies them and
writes the complete `manifest.json` atomically. Killed at any moment, the same call finds the
shards already recorded, skips them and redoes the rest, so the finished store is byte-identical to
an uninterrupted run: no duplicate, missing or reordered rows (shards cover fixed row ranges, and each
shard is encoded from the same texts in the same batches).

A teacher is anything that maps a list of texts to a float32 (n, dim) array (`Encoder`); `load_encoder`
builds one from a sentence-transformers folder (PyTorch) or from a model our JAX encoders load
(`jasper_jax.encode.encode_texts`). Tests pass cheap fake encoders through `encoder_factory`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jasper_jax.data import store as store_lib
from jasper_jax.prompts import PAPER_PROMPTS as NAMED_PROMPTS  # usable by name on the command line

Encoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: its store name, where it loads from, its query prompt, which backend runs it, and its
    model-card options (`jasper_jax.data.torch_teacher`): `dense` head, NV-Embed's `instruction`,
    `append_eos` and `padding_side`, `trust_remote_code`; `python` runs the torch backend in another env."""

    name: str
    path: str
    prompt: str = ""
    backend: str = "auto"  # "torch" (sentence-transformers), "jax" (jasper_jax.encode), "auto"
    dense: int | None = None
    instruction: str = ""
    append_eos: bool = False
    padding_side: str | None = None
    trust_remote_code: bool = False
    python: str | None = None  # where the torch worker runs; not a setting of the vectors

    def options(self) -> dict[str, Any]:
        """The options that change the vectors and differ from the defaults (recorded in the manifest)."""
        values = {
            "dense": self.dense,
            "instruction": self.instruction,
            "append_eos": self.append_eos,
            "padding_side": self.padding_side,
        }
        return {key: value for key, value in values.items() if value not in (None, "", False)}


@dataclass(frozen=True)
class EncodeSettings:
    """How the vectors are computed (not what they are): batch, length cap, device and compute precision."""

    batch_size: int = 64
    max_length: int = 512
    device: str = "auto"  # torch: auto | cuda | cpu
    torch_dtype: str = "float32"  # torch: bfloat16 | float16 | float32
    jax_dtype: str = "float32"  # jax compute: bfloat16 | float32
    devices: int | None = None  # jax: the first N local devices (default all)


def resolve_prompt(prompt: str | None) -> str:
    """A prompt given by name (s2p_query, s2s_query) or literally."""
    if not prompt:
        return ""
    return NAMED_PROMPTS.get(prompt, prompt)


def resolve_backend(spec: TeacherSpec) -> str:
    """ "torch" for sentence-transformers / Hugging Face folders, "jax" otherwise (our checkpoints)."""
    if spec.backend != "auto":
        return spec.backend
    folder = Path(spec.path)
    if (folder / "modules.json").exists() or (folder / "config.json").exists():
        return "torch"
    return "jax"


def check_teacher(spec: TeacherSpec) -> None:
    """Refuse before anything is written: a folder that is not a model, a `dense` it lacks, bad options."""
    from jasper_jax.data.torch_teacher import chosen_dense

    folder = Path(spec.path)
    backend = resolve_backend(spec)
    if backend not in ("torch", "jax"):
        raise ValueError(f"teacher {spec.name}: unknown backend {spec.backend!r}; use torch, jax or auto")
    if backend == "torch" and spec.python is None and folder.is_dir():
        if not ((folder / "modules.json").exists() or (folder / "config.json").exists()):
            raise ValueError(f"teacher {spec.name}: {folder} is not a model folder (no modules.json nor config.json)")
    if backend == "jax" and folder.is_dir() and not (folder / "config.json").exists():
        from jasper_jax.loader import checkpoint_location

        checkpoint_location(folder)  # neither a model folder nor a checkpoint: ModelNotFoundError names it
    if spec.padding_side not in (None, "left", "right"):
        raise ValueError(f"teacher {spec.name}: padding_side {spec.padding_side!r}; use left or right")
    if folder.is_dir():
        chosen_dense(folder, spec.dense)


def _torch_settings(spec: TeacherSpec, settings: EncodeSettings) -> dict[str, Any]:
    return {
        "path": str(spec.path),
        "prompt": spec.prompt,
        **spec.options(),
        "trust_remote_code": spec.trust_remote_code,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "device": settings.device,
        "torch_dtype": settings.torch_dtype,
    }


class DataParallelEncoder:
    """`jasper_jax.encode.JittedEncoder`'s forward with the batch split over local devices (a 1-D `data`
    mesh) and the parameters replicated: every device encodes batch / devices rows."""

    def __init__(self, model, devices: Sequence[Any]):
        import jax
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from jasper_jax.encode import JittedEncoder

        self.inner = JittedEncoder(model)
        mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
        self.mesh = mesh
        self.rows = NamedSharding(mesh, P("data"))
        self.inner.state = jax.device_put(self.inner.state, NamedSharding(mesh, P()))

    def __call__(self, input_ids, attention_mask, head, pixel_values=None, compression_ratio=None):
        import jax

        from jasper_jax.models.attention import kernel_partitioning

        ids, mask = (jax.device_put(np.asarray(a), self.rows) for a in (input_ids, attention_mask))
        with kernel_partitioning(self.mesh, ("data",)):  # a Pallas attention kernel: one per device (shard_map)
            return np.asarray(self.inner.run(self.inner.state, ids, mask, None, head, compression_ratio))


def _jax_encoder(spec: TeacherSpec, settings: EncodeSettings) -> Encoder:
    import jax

    from jasper_jax.encode import encode_texts  # JAX and the model code: only when a JAX teacher runs
    from jasper_jax.loader import load_any

    model = load_any(spec.path, compute_dtype=settings.jax_dtype)
    devices = jax.local_devices()[: settings.devices or None]
    model._jitted = DataParallelEncoder(model.model, devices)  # encode_texts uses the encoder kept on the model
    batch = -(-settings.batch_size // len(devices)) * len(devices)  # a multiple of the device count
    head = f"dense_{spec.dense}" if spec.dense else None
    prompt = (f"Instruct: {spec.instruction}\nQuery: " if spec.instruction else "") + spec.prompt

    def encode_jax(texts: list[str]) -> np.ndarray:
        return np.asarray(
            encode_texts(
                model, texts, head=head, prompt=prompt, max_length=settings.max_length, batch_size=batch, progress=False
            ),
            dtype=np.float32,
        )

    return encode_jax


def load_encoder(spec: TeacherSpec, *, batch_size: int = 64, max_length: int = 512, settings=None) -> Encoder:
    """An `Encoder` for `spec`: sentence-transformers (PyTorch, here or in `spec.python`'s environment) or
    our JAX path (data-parallel over the local devices); rows as the model gives them."""
    settings = settings or EncodeSettings(batch_size=batch_size, max_length=max_length)
    backend = resolve_backend(spec)
    if backend == "torch":
        from jasper_jax.data.torch_teacher import RemoteTeacher, TorchTeacher

        if spec.python:
            return RemoteTeacher(spec.python, _torch_settings(spec, settings))
        return TorchTeacher(_torch_settings(spec, settings))
    if backend == "jax":
        if spec.append_eos or spec.padding_side:
            raise ValueError(f"teacher {spec.name}: append_eos / padding_side are torch-backend options")
        return _jax_encoder(spec, settings)
    raise ValueError(f"teacher {spec.name}: unknown backend {spec.backend!r}; use torch, jax or auto")


def read_corpus(path: str | Path, field: str | None = None) -> list[str]:
    """Texts of a corpus file: JSONL (field `text`, else `query`, or `field`) or plain text, one per line."""
    path = Path(path)
    texts: list[str] = []
    with open(path, encoding="utf-8") as handle:
        if path.suffix in (".jsonl", ".json"):
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                keys = [field] if field else ["text", "query"]
                for key in keys:
                    if key in record:
                        texts.append(record[key])
                        break
                else:
                    raise ValueError(f"{path}:{line_number}: no field {keys} in {sorted(record)}; pass --field")
        else:
            texts = [line.rstrip("\n") for line in handle]
    return texts


def _texts_sha256(texts: Iterable[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for text in texts:
        digest.update(store_lib.text_line(text))
    return digest.hexdigest()


def _teacher_entry(spec: TeacherSpec, dtype: str) -> dict[str, Any]:
    entry = {
        "name": spec.name,
        "path": str(spec.path),
        "backend": resolve_backend(spec),
        "dim": None,
        "dtype": dtype,
        "prompt": spec.prompt,
        "normalisation": "l2",
        "shards": [],
    }
    if spec.options():  # only when set: a store of plain teachers keeps the manifest it always had
        entry["options"] = spec.options()
    return entry


def _check_resumable(
    out: Path, manifest: dict, texts_sha: str, rows: int, teachers: Sequence[TeacherSpec], dtype: str, shard_rows: int
) -> None:
    """Refuse a store another command started (other texts, teachers, prompt, dtype, options or shards),
    naming the first field that differs; nothing is written."""
    problems = []
    if manifest["texts"]["sha256"] != texts_sha or manifest["rows"] != rows:
        problems.append(f"its texts ({manifest['rows']} rows) differ from the corpus ({rows} rows)")
    if manifest["shard_rows"] != shard_rows:
        problems.append(f"it was written with --shard-rows {manifest['shard_rows']}, not {shard_rows}")
    recorded_names = [t["name"] for t in manifest["teachers"]]
    if recorded_names != [s.name for s in teachers]:
        problems.append(f"its teachers are {recorded_names}, this command asks for {[s.name for s in teachers]}")
    else:
        for entry, spec in zip(manifest["teachers"], teachers):
            wanted = {"path": str(spec.path), "prompt": spec.prompt, "dtype": dtype, "options": spec.options()}
            for field, value in wanted.items():
                have = entry.get(field, {} if field == "options" else None)
                if have != value:
                    problems.append(f"teacher {spec.name}'s {field} is {have!r} there, {value!r} here")
    if problems:
        raise ValueError(
            f"{out} already holds a store that this command did not start: "
            + "; ".join(problems)
            + ". Re-run the original command to finish it, or choose another --out."
        )


def _record_path(out: Path, teacher: str, shard: int) -> Path:
    return out / teacher / f"{shard:05d}.json"


def _shard_record(out: Path, entry: dict, shard: int) -> dict | None:
    """{"file", "rows", "sha256", "dim"} of a finished shard: its record file, or the manifest's entry (a
    store begun before records existed); None while the shard is not finished."""
    record = _record_path(out, entry["name"], shard)
    if record.exists():
        return json.loads(record.read_text())
    if shard < len(entry["shards"]):
        return {**entry["shards"][shard], "dim": entry["dim"]}
    return None


def worker_from_environment(env: dict[str, str] | None = None) -> tuple[int | None, int | None]:
    """(worker index, worker count) from the launcher, None where it gives none: a SLURM array, SLURM
    tasks, a Kubernetes Indexed Job (JOB_COMPLETION_INDEX; the count from JASPER_JAX_WORKERS or
    --workers), or JAX's process variables."""
    env = os.environ if env is None else env
    pairs = [
        ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
        ("JOB_COMPLETION_INDEX", "JASPER_JAX_WORKERS"),
        ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"),
    ]
    for index, count in pairs:
        if env.get(index):
            offset = int(env.get("SLURM_ARRAY_TASK_MIN", 0)) if index == "SLURM_ARRAY_TASK_ID" else 0
            return int(env[index]) - offset, int(env[count]) if env.get(count) else None
    return None, None


def _begin_store(out: Path, manifest: dict) -> dict:
    """Create the store's skeleton manifest unless another worker did (then return theirs), and its texts.

    The manifest is put in place with a hard link, which fails when one exists: of workers starting
    together exactly one creates the store; the others compare their settings with it."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / store_lib.MANIFEST
    tmp = out / f"{store_lib.MANIFEST}.{os.getpid()}.tmp"
    store_lib.write_json_atomic(tmp, manifest)
    try:
        os.link(tmp, manifest_path)
        created = manifest
    except FileExistsError:
        created = None
    finally:
        tmp.unlink()
    if created is None:
        return store_lib.read_manifest(out)
    return created


def _ensure_texts(out: Path, texts: Sequence[str], texts_sha: str) -> None:
    """texts.jsonl and its index, written by the worker that finds them absent (a crash after the manifest)."""
    if (out / store_lib.TEXTS).exists() and (out / store_lib.TEXT_INDEX).exists():
        return
    written_rows, written_sha = store_lib.write_texts(out, texts, tmp_suffix=f".{os.getpid()}")
    assert (written_rows, written_sha) == (len(texts), texts_sha)


def merge_store(out: str | Path, *, verify_checksums: bool = True) -> dict[str, Any]:
    """Write the complete manifest of a store whose every shard is finished, after verifying them.

    Raises ValueError naming the missing shards (nothing is written then). Writing the same manifest twice
    gives the same bytes, so several workers finishing together may all merge."""
    out = Path(out)
    manifest = store_lib.read_manifest(out)
    rows, shard_rows = int(manifest["rows"]), int(manifest["shard_rows"])
    shards = store_lib.shard_count(rows, shard_rows)
    merged, missing, broken = [], [], []
    for entry in manifest["teachers"]:
        records = [_shard_record(out, entry, shard) for shard in range(shards)]
        missing += [f"{entry['name']}/{shard:05d}.bin" for shard, r in enumerate(records) if r is None]
        merged.append((entry, records))
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(
            f"{out}: {len(missing)} shard(s) not finished: {shown}. Run (or rerun) the workers that own them "
            "(shard s belongs to worker s mod N), then merge again."
        )
    for entry, records in merged:
        dims = {r["dim"] for r in records} or {0}
        if len(dims) != 1:
            broken.append(f"teacher {entry['name']}: shards of different dims {sorted(dims)}")
            continue
        entry["dim"] = int(dims.pop())
        entry["shards"] = [{"file": r["file"], "rows": r["rows"], "sha256": r["sha256"]} for r in records]
        itemsize = np.dtype(entry["dtype"]).itemsize
        for shard, record in enumerate(records):
            file = out / record["file"]
            expected_rows = store_lib.shard_rows_of(rows, shard_rows, shard)
            if record["rows"] != expected_rows or file.stat().st_size != expected_rows * entry["dim"] * itemsize:
                broken.append(f"{file}: {file.stat().st_size} bytes, expected {expected_rows} rows of {entry['dim']}")
            elif verify_checksums and store_lib.sha256_file(file) != record["sha256"]:
                broken.append(f"{file}: sha256 differs from its record {record['file'][:-4]}.json")
    if broken:
        raise ValueError(f"{out}: cannot merge: " + "; ".join(broken) + ". Delete those shards and rerun their worker.")
    manifest["complete"] = True
    store_lib.write_json_atomic(out / store_lib.MANIFEST, manifest, tmp_suffix=f".{os.getpid()}")
    return manifest


def encode_store(
    texts: Sequence[str],
    out: str | Path,
    teachers: Sequence[TeacherSpec],
    *,
    dtype: str = "float16",
    shard_rows: int = 16384,
    encoder_factory: Callable[[TeacherSpec], Encoder] | None = None,
    batch_size: int = 64,
    max_length: int = 512,
    progress: bool = True,
    worker: int = 0,
    workers: int = 1,
    settings: EncodeSettings | None = None,
    merge: bool = True,
) -> dict[str, Any]:
    """Encode `texts` with every teacher into the store `out`: this worker's shards (s = worker mod
    workers), skipping those already finished; resumes a store this command began and refuses one begun
    with other settings. The last worker to finish (or `merge_store`) writes the complete manifest.

    Each shard is written atomically as `<teacher>/NNNNN.bin` and then recorded in `<teacher>/NNNNN.json`
    (rows, sha256, dim) by the one worker that owns it. `encoder_factory(spec) -> Encoder` defaults to
    `load_encoder`. Rows are L2-normalised in float32 before being cast to `dtype`. Returns the manifest
    (complete=False while other workers' shards remain).
    """
    if dtype not in store_lib.DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {store_lib.DTYPES}")
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker index {worker} out of range for {workers} worker(s): use 0..{workers - 1}")
    names = [spec.name for spec in teachers]
    if not teachers or len(set(names)) != len(names):
        raise ValueError(f"teachers need distinct names, got {names}")
    out = Path(out)
    settings = settings or EncodeSettings(batch_size=batch_size, max_length=max_length)
    factory = encoder_factory or (lambda spec: load_encoder(spec, settings=settings))
    rows = len(texts)
    texts_sha = _texts_sha256(texts)
    skeleton = {
        "format": store_lib.FORMAT,
        "version": store_lib.VERSION,
        "rows": rows,
        "shard_rows": shard_rows,
        "complete": False,
        "texts": {"file": store_lib.TEXTS, "index": store_lib.TEXT_INDEX, "sha256": texts_sha},
        "teachers": [_teacher_entry(spec, dtype) for spec in teachers],
    }
    if (out / store_lib.MANIFEST).exists():
        manifest = store_lib.read_manifest(out)
    else:
        manifest = _begin_store(out, skeleton)
    _check_resumable(out, manifest, texts_sha, rows, teachers, dtype, shard_rows)
    _ensure_texts(out, texts, texts_sha)

    shards = store_lib.shard_count(rows, shard_rows)
    mine = list(range(worker, shards, workers))
    todo = {entry["name"]: [s for s in mine if _shard_record(out, entry, s) is None] for entry in manifest["teachers"]}
    total = len(mine) and sum(store_lib.shard_rows_of(rows, shard_rows, s) for s in mine) * len(teachers)
    left = sum(store_lib.shard_rows_of(rows, shard_rows, s) for pending in todo.values() for s in pending)
    bar = _progress_bar(total, total - left, progress)
    try:
        for spec in teachers:
            if not todo[spec.name]:
                continue
            encoder = factory(spec)
            (out / spec.name).mkdir(exist_ok=True)
            try:
                for shard in todo[spec.name]:
                    _encode_shard(out, texts, spec, encoder, shard, rows, shard_rows, dtype)
                    count = store_lib.shard_rows_of(rows, shard_rows, shard)
                    bar.update(count)
                    bar.set_postfix_str(f"{spec.name} shard {shard + 1}/{shards}")
            finally:
                if hasattr(encoder, "close"):
                    encoder.close()
    finally:
        bar.close()
    if not merge:
        return manifest
    finished = all(_shard_record(out, e, s) is not None for e in manifest["teachers"] for s in range(shards))
    return merge_store(out) if finished else manifest


def _encode_shard(
    out: Path, texts: Sequence[str], spec: TeacherSpec, encoder: Encoder, shard: int, rows: int, shard_rows: int, dtype
) -> None:
    """Encode one shard, write it atomically, then its record (the shard counts as finished from then on)."""
    start = shard * shard_rows
    count = store_lib.shard_rows_of(rows, shard_rows, shard)
    vectors = np.asarray(encoder(list(texts[start : start + count])), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise ValueError(f"teacher {spec.name} returned shape {vectors.shape} for {count} texts")
    relative = f"{spec.name}/{shard:05d}.bin"
    sha = store_lib.write_bytes_atomic(out / relative, store_lib.l2_normalise(vectors).astype(dtype))
    record = {"file": relative, "rows": count, "sha256": sha, "dim": int(vectors.shape[1])}
    store_lib.write_json_atomic(_record_path(out, spec.name, shard), record)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="row",
        unit_scale=True,
        disable=not enabled,
        file=sys.stderr,
        desc="teachers encode",
        dynamic_ncols=True,
    )


TEACHER_OPTIONS = {
    "name": str,
    "prompt": str,
    "backend": str,
    "dense": int,
    "instruction": str,
    "append_eos": bool,
    "padding_side": str,
    "trust_remote_code": bool,
    "python": str,
}


def _option_value(key: str, value: Any, where: str) -> Any:
    kind = TEACHER_OPTIONS.get(key)
    if kind is None:
        raise ValueError(f"{where}: unknown teacher option {key!r}; known: {', '.join(TEACHER_OPTIONS)}")
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{where}: {key}={value!r} is not true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key}={value!r} is not a {kind.__name__}") from None


def split_teacher_argument(argument: str) -> tuple[str, dict[str, Any]]:
    """`PATH[,key=value...]` -> (PATH, options), options typed as `TEACHER_OPTIONS` says."""
    path, *rest = argument.split(",")
    options = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--teacher {argument}: {item!r} is not key=value")
        options[key.strip()] = _option_value(key.strip(), value, f"--teacher {argument}")
    return path, options


def specs_from_file(path: str | Path) -> list[TeacherSpec]:
    """Teachers from a YAML or JSON file: a list (or {"teachers": [...]}) of {path: ..., option: value}."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("teachers")
    if not isinstance(data, list) or not all(isinstance(item, dict) and "path" in item for item in data):
        raise ValueError(f"{path}: expected a list of teachers, each with a path and options")
    specs = []
    for item in data:
        options = {k: _option_value(k, v, str(path)) for k, v in item.items() if k != "path" and v is not None}
        options.setdefault("name", Path(os.path.normpath(str(item["path"]))).name or "teacher")
        options["prompt"] = resolve_prompt(options.get("prompt"))
        specs.append(TeacherSpec(path=str(item["path"]), **options))
    return specs


def specs_from_arguments(
    paths: Sequence[str], names: Sequence[str] | None, prompts: Sequence[str] | None, backends: Sequence[str] | None
) -> list[TeacherSpec]:
    """TeacherSpecs from repeated --teacher/--name/--prompt/--backend (one value for all, or one each);
    options after a path (`PATH,dense=8192,...`) win over the repeated flags."""
    split = [split_teacher_argument(path) for path in paths]
    paths = [path for path, _ in split]

    def per_teacher(values: Sequence[str] | None, default: str, option: str) -> list[str]:
        values = list(values or [])
        if not values:
            return [default] * len(paths)
        if len(values) == 1:
            return values * len(paths)
        if len(values) != len(paths):
            raise ValueError(f"{option} given {len(values)} times for {len(paths)} teachers: give it once or once each")
        return values

    if names:
        chosen = per_teacher(names, "", "--name")
    else:
        chosen = []
        for path, options in split:
            base = options.get("name") or Path(os.path.normpath(path)).name or "teacher"
            name, suffix = base, 2
            while name in chosen:
                name, suffix = f"{base}_{suffix}", suffix + 1
            chosen.append(name)
    specs = []
    for (path, options), name, prompt, backend in zip(
        split, chosen, per_teacher(prompts, "", "--prompt"), per_teacher(backends, "auto", "--backend")
    ):
        options = {"name": name, "prompt": prompt, "backend": backend, **options}
        options["prompt"] = resolve_prompt(options["prompt"])
        specs.append(TeacherSpec(path=str(path), **options))
    return specs


__all__ = [
    "EncodeSettings",
    "Encoder",
    "merge_store",
    "worker_from_environment",
    "TeacherSpec",
    "encode_store",
    "load_encoder",
    "read_corpus",
    "specs_from_arguments",
    "NAMED_PROMPTS",
]
