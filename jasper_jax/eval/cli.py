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


def task_files(lee: str | None, news: str | None) -> tuple[Path, Path]:
    """The Lee folder and NewsArticles.csv: given paths, else fetched into the offline-kit cache."""
    from jasper_jax import assets

    return Path(lee) if lee else assets.fetch_lee(), Path(news) if news else assets.fetch_news()


def sources_for(model: str, backend: str, *, max_length: int, batch_size: int, progress: bool, workdir: Path):
    """{backend: VectorSource} for `model` (a checkpoint is exported under `workdir` for the torch side)."""
    from jasper_jax.eval.encoders import jax_vectors, torch_vectors
    from jasper_jax.export import export_checkpoint
    from jasper_jax.loader import is_model_folder, load_any, resolve_model_path

    path = resolve_model_path(model)
    sources = {}
    if backend in ("both", "jax"):
        sources["jax"] = jax_vectors(
            load_any(path), max_length=max_length, batch_size=batch_size, progress=progress, name="jax"
        )
    if backend in ("both", "torch"):
        folder = path
        if not is_model_folder(path):
            folder = export_checkpoint(path, workdir / "export")
        sources["torch"] = torch_vectors(
            folder, max_length=max_length, batch_size=batch_size, progress=progress, name="torch"
        )
    return sources


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
) -> dict:
    """The results document of `jasper-jax eval` (see the module docstring); `tasks`: mteb task names."""
    from jasper_jax import assets
    from jasper_jax.eval.run import evaluate_heads, max_score_difference
    from jasper_jax.eval.tasks import tasks_by_name

    names = list(tasks or ["offline"])
    lee_folder = Path(lee) if lee else None
    news_csv = Path(news) if news else None
    task_list = tasks_by_name(
        names,
        lambda: lee_folder or assets.fetch_lee(),
        lambda: news_csv or assets.fetch_news(),
        heldout_size,
    )
    with tempfile.TemporaryDirectory(prefix="jasper_eval_") as tmp:
        sources = sources_for(
            model, backend, max_length=max_length, batch_size=batch_size, progress=progress, workdir=Path(tmp)
        )
        scores = {name: evaluate_heads(source, task_list, heads) for name, source in sources.items()}
    result = {
        "model": str(model),
        "settings": {
            "max_length": max_length,
            "heldout_size": heldout_size,
            "lee": str(lee_folder or assets.fetch_lee()) if "LeeDocumentSimilarity" in _names(task_list) else None,
            "news": str(news_csv or assets.fetch_news()) if "NewsTitleRetrieval" in _names(task_list) else None,
            "tasks": _names(task_list),
            "prompt": "",
        },
        "scores": scores,
    }
    if images:
        from jasper_jax.eval.images import image_caption_retrieval
        from jasper_jax.loader import load_any

        result["image_retrieval"] = image_caption_retrieval(
            load_any(model), images, split=images_split, heads=heads, max_length=max_length, progress=progress
        )
    if len(scores) == 2:
        difference = max_score_difference(scores["jax"], scores["torch"])
        result["max_backend_difference"] = difference
        result["backends_agree"] = difference <= AGREEMENT_TOLERANCE
    return result


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
        )
    except (UserError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"jasper-jax eval: {error}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for backend, per_head in result["scores"].items():
        for head, values in per_head.items():
            shown = "  ".join(f"{k}={v:.4f}" for k, v in values.items())
            print(f"{backend:5s} {head:8s} {shown}")
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
