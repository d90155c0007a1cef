"""The demo's contrastive data: NewsArticles training titles -> their articles, with mined hard negatives.

Every text is a row of the demo's teacher store already (the corpus holds each training title right before
its article), so no teacher is run again: `news_pairs_file` writes `OUT/data/news_pairs.jsonl` with the
(title, article) pairs whose two texts the store holds, `jasper_jax.data.pairs.build_pairs` indexes them
over the store and `mine_negatives` picks each title's hardest other articles by teacher cosine (with the
positive-aware false-negative guard). The 1,000 held-out NewsArticles articles and their titles are on the
corpus's exclusion list, so they are never in the store and never in a pair.

Each pair stage of the training config gets its folder (`pair_stage.pairs_folder`, relative to the workdir);
a folder made before with the same mining settings is kept, one made with others is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def news_pairs_file(news_csv: Path, heldout_size: int, store: Path, out: Path) -> dict[str, int]:
    """Write `{"query": title, "pos": article}` for each training article whose title and article are store
    rows (stripped, as the corpus keeps them); the counts written and skipped."""
    from jasper_jax.data.store import TeacherStore
    from jasper_jax.eval.tasks import news_split

    _, train = news_split(news_csv, heldout_size)
    teacher_store = TeacherStore(store)
    stored = set(teacher_store.texts(range(len(teacher_store))))
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for article in train:
            title, text = article.title.strip(), article.text.strip()
            if title in stored and text in stored and title != text:
                handle.write(json.dumps({"query": title, "pos": text}, ensure_ascii=False) + "\n")
                written += 1
    return {"pairs": written, "training_articles": len(train)}


def mined_settings(negatives: int, threshold: float) -> dict[str, Any]:
    """What a demo pairs folder's `manifest["mined"]` must say for it to be reused."""
    return {"negatives": negatives, "threshold": threshold, "pool": "documents", "seed": 0}


def build_pair_folder(
    news_csv: Path, heldout_size: int, store: Path, folder: Path, *, negatives: int, threshold: float
) -> dict[str, Any] | None:
    """Make the mined pairs `folder` (None if it exists with these settings); refuse one made with others."""
    from jasper_jax.data.pairs import MANIFEST, PairsError, build_pairs, mine_negatives

    wanted = mined_settings(negatives, threshold)
    if (folder / MANIFEST).exists():
        mined = json.loads((folder / MANIFEST).read_text()).get("mined") or {}
        found = {key: mined.get(key) for key in wanted}
        if found != wanted:
            raise PairsError(
                f"{folder} was mined with {found}, this demo wants {wanted}: delete {folder} to mine it again"
            )
        return None
    source = folder.parent / f"{folder.name}.jsonl"
    counts = news_pairs_file(news_csv, heldout_size, store, source)
    if counts["pairs"] == 0:
        raise PairsError(f"{store}: none of the training titles and articles is in the store; nothing to pair")
    unmined = folder.with_name(folder.name + "_unmined")
    if unmined.exists():  # left by a run stopped between build and mine
        shutil.rmtree(unmined)
    build_pairs(source, store, unmined)
    manifest = mine_negatives(
        unmined, folder, negatives=negatives, threshold=threshold, seed=wanted["seed"], pool=wanted["pool"]
    )
    shutil.rmtree(unmined)
    return {**counts, "examples_short": manifest["mined"]["examples_short"]}
