"""A PyTorch (sentence-transformers) teacher: load it as its model card says, encode texts; also a stdio worker.

This module imports nothing from jasper_jax, so that `python torch_teacher.py` runs in another environment
(a teacher whose remote code needs other transformers / sentence-transformers versions, e.g. NV-Embed-v2;
`teachers encode --python ENV/bin/python`). Our process keeps writing the store; the worker only encodes.

Model-card conventions (options of a teacher):
- `dense`: the `*_Dense_{dense}` head folder of a Stella-layout model replaces the Dense module that
  modules.json names; a folder with several such heads and no `dense` is refused, listing them.
- `instruction`: NV-Embed's query format, `Instruct: {instruction}\\nQuery: ` before each text (only when given).
- `append_eos`: the tokenizer's EOS token appended to each text, once (not again when a text ends with it).
- `padding_side`: "left" / "right" for the tokenizer (NV-Embed's card sets "right").
- `trust_remote_code`: load the model's own modeling code (off unless asked).

Worker protocol (stdin/stdout, binary): each message is an 8-byte little-endian length and that many bytes.
Our process sends the settings as JSON, then one JSON list of texts per request; the worker answers each
with the bytes of a float32 `.npy` array, or a JSON object {"error": message}. An empty message ends it.
"""

from __future__ import annotations

import io
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np

DENSE_FOLDER = re.compile(r"^\d+_Dense_(\d+)$")


def dense_heads(folder: str | Path) -> dict[int, Path]:
    """Output dim -> folder of each `N_Dense_D` head folder of a sentence-transformers folder."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob("*_Dense_*")) if folder.is_dir() else []:
        match = DENSE_FOLDER.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return found


def chosen_dense(folder: str | Path, dense: int | None) -> Path | None:
    """The head folder for `dense`, None when the folder has at most one head and none is asked for."""
    heads = dense_heads(folder)
    if dense is None:
        if len(heads) > 1:
            raise ValueError(
                f"teacher {folder} has {len(heads)} Dense heads ({', '.join(p.name for p in heads.values())}): "
                f"choose one with dense=D (one of {', '.join(map(str, heads))}); the paper uses dense=8192 for stella"
            )
        return None
    if dense not in heads:
        listed = ", ".join(map(str, heads)) or "none"
        raise ValueError(f"teacher {folder}: no Dense head with dense={dense}; its heads: {listed}")
    return heads[dense]


def prepare_texts(texts: list[str], *, prompt: str = "", instruction: str = "", eos: str | None = None) -> list[str]:
    """The texts as the model sees them: instruction (NV-Embed format) or prompt first, EOS appended once."""
    prefix = (f"Instruct: {instruction}\nQuery: " if instruction else "") + (prompt or "")
    out = [prefix + text for text in texts]
    if eos:
        out = [text if text.endswith(eos) else text + eos for text in out]
    return out


def pick_device(device: str) -> str:
    """auto = cuda when torch sees one (else cpu); cuda / cpu as asked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device auto or cpu")
    return device


def _dtype_keyword() -> str:
    """`dtype` for from_pretrained since transformers 4.56, `torch_dtype` before (e.g. NV-Embed-v2's 4.42)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class TorchTeacher:
    """A sentence-transformers teacher with its model-card options; `teacher(texts) -> float32 (n, d)`."""

    def __init__(self, settings: dict):
        import torch
        from sentence_transformers import SentenceTransformer

        self.settings = settings
        path = settings["path"]
        head = chosen_dense(path, settings.get("dense"))
        dtype = getattr(torch, settings.get("torch_dtype") or "float32")
        device = pick_device(settings.get("device") or "auto")
        try:
            model = SentenceTransformer(
                path,
                device=device,
                trust_remote_code=bool(settings.get("trust_remote_code")),
                model_kwargs={_dtype_keyword(): dtype},
                local_files_only=True,
            )
        except ValueError as error:
            if "trust_remote_code" in str(error) and not settings.get("trust_remote_code"):
                raise ValueError(
                    f"teacher {path} needs its own modeling code: add trust_remote_code=true to the teacher"
                ) from None
            raise
        if head is not None:
            dense_index = [i for i, module in enumerate(model) if type(module).__name__ == "Dense"]
            if len(dense_index) != 1:
                raise ValueError(f"teacher {path}: dense={settings['dense']} needs one Dense module in modules.json")
            index = dense_index[0]
            replacement = type(model[index]).load(str(head)).to(device=device, dtype=dtype)
            model._modules[list(model._modules)[index]] = replacement
        max_length = settings.get("max_length") or 512
        model.max_seq_length = min(max_length, model.max_seq_length or max_length)
        if settings.get("padding_side"):
            model.tokenizer.padding_side = settings["padding_side"]
        self.model = model
        self.eos = model.tokenizer.eos_token if settings.get("append_eos") else None
        if settings.get("append_eos") and not self.eos:
            raise ValueError(f"teacher {path}: append_eos asked for, but its tokenizer has no eos_token")

    def __call__(self, texts: list[str]) -> np.ndarray:
        s = self.settings
        prepared = prepare_texts(texts, prompt=s.get("prompt", ""), instruction=s.get("instruction", ""), eos=self.eos)
        vectors = self.model.encode(
            prepared,
            batch_size=int(s.get("batch_size") or 64),  # sentence-transformers sorts each call's texts by length
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _read_message(stream) -> bytes | None:
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    return stream.read(size) if size else b""


def _write_message(stream, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def serve(stdin, stdout) -> None:
    """The worker loop (module docstring): settings, then texts -> vectors until an empty message."""
    settings = json.loads(_read_message(stdin))
    try:
        teacher = TorchTeacher(settings)
        _write_message(stdout, json.dumps({"ready": True}).encode())
    except Exception as error:  # the parent turns it into its own error message
        _write_message(stdout, json.dumps({"error": f"{type(error).__name__}: {error}"}).encode())
        return
    while (message := _read_message(stdin)) not in (None, b""):
        try:
            buffer = io.BytesIO()
            np.save(buffer, teacher(json.loads(message)))
            _write_message(stdout, buffer.getvalue())
        except Exception as error:
            _write_message(stdout, json.dumps({"error": f"{type(error).__name__}: {error}"}).encode())


class RemoteTeacher:
    """A `TorchTeacher` run by another Python (`python`, e.g. ENV/bin/python) in a child process."""

    def __init__(self, python: str, settings: dict):
        import subprocess

        self.process = subprocess.Popen(
            [python, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.python = python
        _write_message(self.process.stdin, json.dumps(settings).encode())
        self._answer()

    def _answer(self) -> bytes:
        data = _read_message(self.process.stdout)
        if data is None:
            raise RuntimeError(f"the encoding worker ({self.python}) ended without an answer")
        if data[:1] == b"{":
            reply = json.loads(data)
            if "error" in reply:
                self.close()
                raise ValueError(f"encoding worker ({self.python}): {reply['error']}")
        return data

    def __call__(self, texts: list[str]) -> np.ndarray:
        _write_message(self.process.stdin, json.dumps(list(texts)).encode())
        return np.load(io.BytesIO(self._answer())).astype(np.float32)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                _write_message(self.process.stdin, b"")
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self.process.wait(timeout=60)


if __name__ == "__main__":
    import os

    answers = os.fdopen(os.dup(1), "wb")  # the protocol's channel; what libraries print goes to stderr
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)
