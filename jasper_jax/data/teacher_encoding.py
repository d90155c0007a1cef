"""Encode a corpus with one or more teachers into a teacher store, shard by shard, resumably.

`encode_store` writes the texts, then for each teacher in turn each shard of `shard_rows` rows: the shard
is encoded, written to a temporary file, fsynced, renamed, and only then recorded (with its sha256) in
`manifest.json`, which is itself replaced atomically. Killed at any moment, the same call finds the
shards the manifest records, skips them and redoes the rest, so the finished store is byte-identical to
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
    """One teacher: its store name, where it loads from, its query prompt and which backend runs it."""

    name: str
    path: str
    prompt: str = ""
    backend: str = "auto"  # "torch" (sentence-transformers), "jax" (jasper_jax.encode), "auto"


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


def load_encoder(spec: TeacherSpec, *, batch_size: int = 64, max_length: int = 512) -> Encoder:
    """An `Encoder` for `spec`: sentence-transformers (PyTorch) or our JAX path; rows as the model gives."""
    backend = resolve_backend(spec)
    if backend == "torch":
        from sentence_transformers import SentenceTransformer  # heavy: only when a torch teacher runs

        model = SentenceTransformer(spec.path, device="cpu", trust_remote_code=True)
        model.max_seq_length = min(max_length, model.max_seq_length or max_length)

        def encode_torch(texts: list[str]) -> np.ndarray:
            vectors = model.encode(
                texts, prompt=spec.prompt or None, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            return np.asarray(vectors, dtype=np.float32)

        return encode_torch
    if backend == "jax":
        from jasper_jax.encode import encode_texts  # JAX and the model code: only when a JAX teacher runs
        from jasper_jax.loader import load_any

        model = load_any(spec.path)  # loaded (and jitted) once for all shards: encode_texts keeps its encoder

        def encode_jax(texts: list[str]) -> np.ndarray:
            return np.asarray(
                encode_texts(
                    model, texts, prompt=spec.prompt, max_length=max_length, batch_size=batch_size, progress=False
                ),
                dtype=np.float32,
            )

        return encode_jax
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
    return {
        "name": spec.name,
        "path": str(spec.path),
        "backend": resolve_backend(spec),
        "dim": None,
        "dtype": dtype,
        "prompt": spec.prompt,
        "normalisation": "l2",
        "shards": [],
    }


def _check_resumable(
    out: Path, manifest: dict, texts_sha: str, rows: int, teachers: Sequence[TeacherSpec], dtype: str, shard_rows: int
) -> None:
    """Refuse to resume a store that another command started (other texts, teachers, dtype or shards)."""
    problems = []
    if manifest["texts"]["sha256"] != texts_sha or manifest["rows"] != rows:
        problems.append(f"its texts ({manifest['rows']} rows) differ from the corpus ({rows} rows)")
    if manifest["shard_rows"] != shard_rows:
        problems.append(f"it was written with --shard-rows {manifest['shard_rows']}, not {shard_rows}")
    recorded = [(t["name"], t["path"], t["prompt"], t["dtype"]) for t in manifest["teachers"]]
    wanted = [(s.name, str(s.path), s.prompt, dtype) for s in teachers]
    if recorded != wanted:
        problems.append(f"its teachers (name, path, prompt, dtype) are {recorded}, this command asks for {wanted}")
    if problems:
        raise ValueError(
            f"{out} already holds a store that this command did not start: "
            + "; ".join(problems)
            + ". Re-run the original command to finish it, or choose another --out."
        )


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
) -> dict[str, Any]:
    """Encode `texts` with every teacher into the store `out`, resuming a store this call began.

    `encoder_factory(spec) -> Encoder` defaults to `load_encoder`. Rows are L2-normalised in float32
    before being cast to `dtype` (float16 holds unit vectors without overflow). Returns the manifest.
    """
    if dtype not in store_lib.DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {store_lib.DTYPES}")
    names = [spec.name for spec in teachers]
    if not teachers or len(set(names)) != len(names):
        raise ValueError(f"teachers need distinct names, got {names}")
    out = Path(out)
    factory = encoder_factory or (lambda spec: load_encoder(spec, batch_size=batch_size, max_length=max_length))
    rows = len(texts)
    texts_sha = _texts_sha256(texts)
    manifest_path = out / store_lib.MANIFEST
    if manifest_path.exists():
        manifest = store_lib.read_manifest(out)
        _check_resumable(out, manifest, texts_sha, rows, teachers, dtype, shard_rows)
    else:
        out.mkdir(parents=True, exist_ok=True)
        written_rows, written_sha = store_lib.write_texts(out, texts)
        assert (written_rows, written_sha) == (rows, texts_sha)
        manifest = {
            "format": store_lib.FORMAT,
            "version": store_lib.VERSION,
            "rows": rows,
            "shard_rows": shard_rows,
            "complete": False,
            "texts": {"file": store_lib.TEXTS, "index": store_lib.TEXT_INDEX, "sha256": texts_sha},
            "teachers": [_teacher_entry(spec, dtype) for spec in teachers],
        }
        store_lib.write_json_atomic(manifest_path, manifest)

    shards = store_lib.shard_count(rows, shard_rows)
    done = sum(shard["rows"] for entry in manifest["teachers"] for shard in entry["shards"])
    bar = _progress_bar(rows * len(teachers), done, progress)
    try:
        for spec, entry in zip(teachers, manifest["teachers"]):
            if len(entry["shards"]) == shards:
                continue
            encoder = factory(spec)
            (out / spec.name).mkdir(exist_ok=True)
            for shard in range(len(entry["shards"]), shards):
                start = shard * shard_rows
                count = store_lib.shard_rows_of(rows, shard_rows, shard)
                vectors = np.asarray(encoder(list(texts[start : start + count])), dtype=np.float32)
                if vectors.ndim != 2 or vectors.shape[0] != count:
                    raise ValueError(f"teacher {spec.name} returned shape {vectors.shape} for {count} texts")
                if entry["dim"] is None:
                    entry["dim"] = int(vectors.shape[1])
                elif vectors.shape[1] != entry["dim"]:
                    raise ValueError(f"teacher {spec.name} returned dim {vectors.shape[1]}, earlier {entry['dim']}")
                relative = f"{spec.name}/{shard:05d}.bin"
                sha = store_lib.write_bytes_atomic(out / relative, store_lib.l2_normalise(vectors).astype(dtype))
                entry["shards"].append({"file": relative, "rows": count, "sha256": sha})
                store_lib.write_json_atomic(manifest_path, manifest)
                bar.update(count)
                bar.set_postfix_str(f"{spec.name} shard {shard + 1}/{shards}")
    finally:
        bar.close()
    for entry in manifest["teachers"]:
        if entry["dim"] is None:  # an empty corpus: record the dim as unknown (0)
            entry["dim"] = 0
    manifest["complete"] = True
    store_lib.write_json_atomic(manifest_path, manifest)
    return manifest


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


def specs_from_arguments(
    paths: Sequence[str], names: Sequence[str] | None, prompts: Sequence[str] | None, backends: Sequence[str] | None
) -> list[TeacherSpec]:
    """TeacherSpecs from repeated --teacher/--name/--prompt/--backend (one value for all, or one each)."""

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
        for path in paths:
            base = Path(os.path.normpath(path)).name or "teacher"
            name, suffix = base, 2
            while name in chosen:
                name, suffix = f"{base}_{suffix}", suffix + 1
            chosen.append(name)
    return [
        TeacherSpec(name=name, path=str(path), prompt=resolve_prompt(prompt), backend=backend)
        for path, name, prompt, backend in zip(
            paths, chosen, per_teacher(prompts, "", "--prompt"), per_teacher(backends, "auto", "--backend")
        )
    ]


__all__ = [
    "Encoder",
    "TeacherSpec",
    "encode_store",
    "load_encoder",
    "read_corpus",
    "specs_from_arguments",
    "NAMED_PROMPTS",
]
