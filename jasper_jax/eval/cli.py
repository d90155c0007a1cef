"""`jasper-jax eval --model M --out results.json`: the offline tasks, per head, on JAX and on PyTorch.

    jasper-jax eval --model runs/minilm_demo/stage3 --out results.json         # a training checkpoint
    jasper-jax eval --model artifacts/demo/export --out results.json           # an exported folder
    jasper-jax eval --model ~/.cache/jasper_jax/all-mpnet-base-v2 --backend torch --out mpnet.json
    jasper-jax eval --model minilm --out minilm.json                             # a model alias (jasper_jax.loader)

Tasks (`jasper_jax.eval.tasks`), by default the offline kit's: Lee document similarity (Spearman of cosine
vs human scores) and NewsArticles title -> article retrieval over the fixed 1,000 held-out articles
(nDCG@10, MRR@10). The files come from the offline kit (`python -m jasper_jax.assets`, or --lee /
--news). `--tasks NAME,...` evaluates any mteb task by name instead (`mteb.get_tasks`; its data needs hub
access or the HF cache; "offline" names the two kit tasks); such a task reports
`<task>/<split>/main_score`.

Backends: `jax` runs our `JasperStudent`; `torch` runs `SentenceTransformer` on the exported folder (a
checkpoint is exported to a temporary folder first); `both` (default) runs both through `mteb.evaluate` and
fails (exit 1) unless every score agrees within 1e-3.

results.json: {"model", "settings", "scores": {backend: {head: {lee_spearman, news_ndcg_at_10,
news_mrr_at_10}}}, "max_backend_difference", "backends_agree"}.

A model with a token compressor (`--compression-ratios 1.0,0.5,0.33`, default its own ratio) is evaluated
at each ratio: `settings.compression_ratios` lists them, `by_compression_ratio` holds one entry per ratio
{"compression_ratio", "scores", "max_backend_difference", "backends_agree"}, `scores` is the first
ratio's, and the top-level difference / agreement cover every ratio. Its torch backend runs our export
(`jasper_jax.convert.export`, the released JasperV2Encoder layout, one head), exported first when the
folder is not one. Without a compressor `settings.compression_ratios` is null and nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from jasper_jax.errors import UserError
from jasper_jax.eval.run import AGREEMENT_TOLERANCE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="training checkpoint, jasper-jax export, HF / sentence-transformers folder, or a model alias (minilm)",
    )
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--backend", choices=("both", "jax", "torch"), default="both")
    parser.add_argument("--heads", default="", help="comma-separated heads (default: every head and 'pooled')")
    parser.add_argument(
        "--lee", default=None, help="folder with lee.cor and similarities0-1.txt (default: offline kit)"
    )
    parser.add_argument("--news", default=None, help="NewsArticles.csv (default: offline kit)")
    parser.add_argument(
        "--tasks",
        default="",
        help="comma-separated mteb task names (default: the offline kit's LeeDocumentSimilarity,NewsTitleRetrieval)",
    )
    parser.add_argument("--heldout-size", type=int, default=1000, help="held-out articles for retrieval")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text (both backends)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--images",
        default=None,
        help="image-caption folder ({split}/captions.jsonl): adds image -> caption retrieval "
        "(R@1, R@10 vs chance) for a model with a vision tower (JAX backend)",
    )
    parser.add_argument("--images-split", default="heldout", help="split of --images (default: heldout)")
    parser.add_argument(
        "--compression-ratios",
        default="",
        help="comma-separated compression ratios in (0, 1], e.g. 1.0,0.5,0.33, each evaluated, for a model "
        "with a token compressor (default: its own ratio; refused for a model without one)",
    )


def task_files(lee: str | None, news: str | None) -> tuple[Path, Path]:
    """The Lee folder and NewsArticles.csv: given paths, else fetched into the offline-kit cache."""
    from jasper_jax import assets

    return Path(lee) if lee else assets.fetch_lee(), Path(news) if news else assets.fetch_news()


def torch_folder(path: Path, loaded, workdir: Path) -> Path:
    """The sentence-transformers folder the torch backend runs: `path` itself if it is one of ours or a
    plain model folder; a checkpoint, or a compressed model not exported by us (e.g. the released
    Jasper-Token-Compression folder, whose own code is not ours), exported under `workdir` first."""
    from jasper_jax.convert import jasper_v2
    from jasper_jax.convert.export import export_model
    from jasper_jax.export import DEFAULT_MAX_SEQ_LENGTH, export_checkpoint
    from jasper_jax.loader import is_model_folder

    if not is_model_folder(path):
        return export_checkpoint(path, workdir / "export")
    compressed = loaded is not None and loaded.config.token_compression is not None
    if compressed and not (path / f"{jasper_v2.MODELING}.py").exists():
        return export_model(
            loaded.model,
            loaded.config,
            loaded.tokenizer_folder,
            workdir / "export",
            prompts=loaded.prompts,
            max_seq_length=loaded.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        )
    return path


def sources_for(
    loaded,
    folder: Path | None,
    *,
    max_length: int,
    batch_size: int,
    progress: bool,
    compression_ratio: float | None = None,
) -> dict:
    """{backend: VectorSource}: "jax" over `loaded` (a LoadedModel) unless None, "torch" over the
    sentence-transformers `folder` unless None, both at `compression_ratio` (None: the model's own)."""
    from jasper_jax.eval.encoders import jax_vectors, torch_vectors

    options = dict(max_length=max_length, batch_size=batch_size, progress=progress, compression_ratio=compression_ratio)
    suffix = "" if compression_ratio is None else f"@{compression_ratio:g}"
    sources = {}
    if loaded is not None:
        sources["jax"] = jax_vectors(loaded, name=f"jax{suffix}", **options)
    if folder is not None:
        sources["torch"] = torch_vectors(folder, name=f"torch{suffix}", **options)
    return sources


def ratios_to_evaluate(config, requested: list[float] | None) -> list[float | None]:
    """The ratios to evaluate: `requested` (checked), by default the compressed model's own default
    ratio; `[None]` for a model without a compressor (`config` None: not loaded, a plain torch-only
    folder; asking such a model for ratios is a UserError)."""
    from jasper_jax.models.token_compression import check_ratio

    if config is None or config.token_compression is None:
        if requested:
            raise UserError("--compression-ratios given but the model has no token compressor (token_compression)")
        return [None]
    ratios = [check_ratio(ratio, "--compression-ratios") for ratio in requested or [config.token_compression.ratio]]
    return list(dict.fromkeys(ratios))


def parse_ratios(text: str) -> list[float] | None:
    """`"1.0,0.5,0.33"` -> [1.0, 0.5, 0.33]; empty -> None; a non-number is a UserError naming it."""
    ratios = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                ratios.append(float(item))
            except ValueError:
                raise UserError(f"--compression-ratios: {item!r} is not a number (e.g. 1.0,0.5,0.33)") from None
    return ratios or None


def evaluate_model(
    model: str,
    *,
    backend: str = "both",
    heads: list[str] | None = None,
    lee: str | Path | None = None,
    news: str | Path | None = None,
    heldout_size: int = 1000,
    max_length: int = 128,
    batch_size: int = 32,
    progress: bool = True,
    images: str | Path | None = None,
    images_split: str = "heldout",
    tasks: list[str] | None = None,
    compression_ratios: list[float] | None = None,
) -> dict:
    """The results document of `jasper-jax eval` (see the module docstring); `tasks`: mteb task names;
    `compression_ratios`: for a model with a token compressor (default its own ratio)."""
    from jasper_jax import assets
    from jasper_jax.eval.run import evaluate_heads
    from jasper_jax.eval.tasks import tasks_by_name
    from jasper_jax.loader import load_any, resolve_model_path

    names = list(tasks or ["offline"])
    lee_folder = Path(lee) if lee else None
    news_csv = Path(news) if news else None
    task_list = tasks_by_name(
        names,
        lambda: lee_folder or assets.fetch_lee(),
        lambda: news_csv or assets.fetch_news(),
        heldout_size,
    )
    path = resolve_model_path(model)
    loaded = load_any(path) if _needs_jax_model(path, backend) else None
    ratios = ratios_to_evaluate(loaded.config if loaded else None, compression_ratios)
    entries = []
    with tempfile.TemporaryDirectory(prefix="jasper_eval_") as tmp:
        folder = torch_folder(path, loaded, Path(tmp)) if backend in ("both", "torch") else None
        for ratio in ratios:
            sources = sources_for(
                loaded if backend != "torch" else None,
                folder,
                max_length=max_length,
                batch_size=batch_size,
                progress=progress,
                compression_ratio=ratio,
            )
            scores = {name: evaluate_heads(src, task_list, _heads_of(src, heads)) for name, src in sources.items()}
            entries.append(_with_agreement({"compression_ratio": ratio, "scores": scores}))
    result = {
        "model": str(model),
        "settings": {
            "max_length": max_length,
            "heldout_size": heldout_size,
            "lee": str(lee_folder or assets.fetch_lee()) if "LeeDocumentSimilarity" in _names(task_list) else None,
            "news": str(news_csv or assets.fetch_news()) if "NewsTitleRetrieval" in _names(task_list) else None,
            "tasks": _names(task_list),
            "prompt": "",
            "compression_ratios": ratios if ratios != [None] else None,
        },
        "scores": entries[0]["scores"],
    }
    if ratios != [None]:
        result["by_compression_ratio"] = entries
    if images:
        from jasper_jax.eval.images import image_caption_retrieval

        result["image_retrieval"] = image_caption_retrieval(
            loaded or load_any(path), images, split=images_split, heads=heads, max_length=max_length, progress=progress
        )
    if "max_backend_difference" in entries[0]:
        result["max_backend_difference"] = max(entry["max_backend_difference"] for entry in entries)
        result["backends_agree"] = all(entry["backends_agree"] for entry in entries)
    return result


def _needs_jax_model(path: Path, backend: str) -> bool:
    """Whether eval loads the JAX model: for the jax backend, and for torch when the torch folder or the
    ratios need it (a checkpoint, a compressed model); not for a plain torch-only folder (e.g. a teacher)."""
    from jasper_jax.convert.hf import read_json
    from jasper_jax.convert.jasper_v2 import is_jasper_v2
    from jasper_jax.loader import is_model_folder

    if backend != "torch" or not is_model_folder(path):
        return True
    return (path / "config.json").exists() and is_jasper_v2(read_json(path / "config.json"))


def _heads_of(source, heads: list[str] | None) -> list[str] | None:
    """The asked heads that `source` has (a compressed export's torch side has only its one head);
    all of them when none were asked."""
    return None if heads is None else [head for head in heads if head in source.heads] or heads


def _with_agreement(entry: dict) -> dict:
    """`entry` ({"scores": {backend: ...}}) with max_backend_difference and backends_agree for two backends."""
    from jasper_jax.eval.run import max_score_difference

    scores = entry["scores"]
    if len(scores) == 2:
        entry["max_backend_difference"] = max_score_difference(scores["jax"], scores["torch"])
        entry["backends_agree"] = entry["max_backend_difference"] <= AGREEMENT_TOLERANCE
    return entry


def _names(tasks: list) -> list[str]:
    return [task.metadata.name for task in tasks]


def run(args: argparse.Namespace) -> int:
    heads = [h for h in args.heads.split(",") if h] or None
    try:
        result = evaluate_model(
            args.model,
            backend=args.backend,
            heads=heads,
            lee=args.lee,
            news=args.news,
            heldout_size=args.heldout_size,
            max_length=args.max_length,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            images=args.images,
            images_split=args.images_split,
            tasks=[name.strip() for name in args.tasks.split(",") if name.strip()] or None,
            compression_ratios=parse_ratios(args.compression_ratios),
        )
    except (UserError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"jasper-jax eval: {error}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for entry in result.get("by_compression_ratio") or [{"compression_ratio": None, "scores": result["scores"]}]:
        ratio = "" if entry["compression_ratio"] is None else f"ratio={entry['compression_ratio']:g}  "
        for backend, per_head in entry["scores"].items():
            for head, values in per_head.items():
                shown = "  ".join(f"{k}={v:.4f}" for k, v in values.items())
                print(f"{backend:5s} {head:8s} {ratio}{shown}")
    for head, values in result.get("image_retrieval", {}).items():
        print(
            f"image {head:8s} R@1={values['image_r_at_1']:.4f} (chance {values['chance_r_at_1']:.4f})  "
            f"R@10={values['image_r_at_10']:.4f} (chance {values['chance_r_at_10']:.4f})  pairs={values['pairs']}"
        )
    if "backends_agree" in result:
        print(
            f"max |jax - torch| over all scores: {result['max_backend_difference']:.2e} "
            f"({'agree' if result['backends_agree'] else 'DISAGREE'} within {AGREEMENT_TOLERANCE})"
        )
        if not result["backends_agree"]:
            return 1
    return 0
