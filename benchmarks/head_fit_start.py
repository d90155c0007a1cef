"""Where a fitted fc1 starts: held-out agreement and retrieval of the closed-form head on the frozen student.

    .venv/bin/python benchmarks/head_fit_start.py [--run artifacts/demo] [--rows 2048]

Needs a finished demo folder (its teacher store, and `eval/teacher_agreement_vectors.npy`: the concatenated
teacher's vectors of the held-out articles then their titles). The student is the undistilled encoder
(`model.source` of configs/minilm_demo.py). Two fits of fc1 on the store's first `rows` texts, in store
order, every 4th batch of 32 held back to choose the ridge, as `head_init="fit"` does:

- `plain`: the fit before c813f41, target y (the normalised teacher vector), one ridge for every column;
- `directions`: `jasper_jax.train.head_fit` now, target |x| y, one ridge per output column.

Scores on the held-out texts: mean cosine to the teacher and similarity-matrix MSE (as the demo's
agreement), and title -> article nDCG@10 over the 1,000 held-out articles (one relevant article per title,
so nDCG@10 = 1/log2(rank + 2) when the article ranks in the top 10; it matches mteb's figure to 4e-4).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

BATCH = 32


def pooled_outputs(loaded, texts: list[str], max_length: int) -> np.ndarray:
    """The student's (unnormalised) pooled output of each text, float64."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jasper_jax.data.tokenization import load_tokenizer, pad_batch

    tokenizer = load_tokenizer(loaded.tokenizer_folder, max_length)
    graphdef, state = nnx.split(loaded.model)
    run = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).pooled(ids, mask))
    ids = tokenizer.encode(list(texts), "")
    out = []
    for start in range(0, len(ids), 64):
        chunk = ids[start : start + 64]
        count = len(chunk)
        batch = pad_batch(chunk + [chunk[-1]] * (64 - count), max_length, tokenizer.pad_id)
        vectors = run(state, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
        out.append(np.asarray(vectors)[:count])
    return np.concatenate(out).astype(np.float64)


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def scores(vectors: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    vectors = normalized(vectors)
    half = len(vectors) // 2  # articles, then their titles in the same order
    similarity = vectors[half:] @ vectors[:half].T
    rank = np.sum(similarity > np.diag(similarity)[:, None], axis=1)
    out = {
        "similarity_mse": float(np.mean((vectors @ vectors.T - teacher @ teacher.T) ** 2)),
        "ndcg_at_10": float(np.mean(np.where(rank < 10, 1 / np.log2(rank + 2), 0.0))),
    }
    if vectors.shape[1] == teacher.shape[1]:
        out["mean_cosine"] = float(np.mean(np.sum(vectors * teacher, axis=1)))
    return out


def statistics(features: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """`jasper_jax.train.head_fit.feature_statistics`'s sums, in float64 from the given rows and targets."""
    from jasper_jax.train.head_fit import VALIDATION_EVERY

    augmented = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    held_back = (np.arange(len(features)) // BATCH) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    out = {"gram": augmented.T @ augmented, "cross": augmented.T @ targets, "validation_rows": float(held_back.sum())}
    for name, rows in (("fit", ~held_back), ("validation", held_back)):
        out[f"{name}_gram"] = augmented[rows].T @ augmented[rows]
        out[f"{name}_cross"] = augmented[rows].T @ targets[rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="artifacts/demo", help="a finished `jasper-jax demo` folder")
    parser.add_argument("--rows", type=int, default=2048, help="texts the fit uses (the demo: 64 batches of 32)")
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()

    from jasper_jax.assets import fetch_news, minilm_path
    from jasper_jax.data.store import TeacherStore
    from jasper_jax.eval.tasks import news_split
    from jasper_jax.loader import load_any
    from jasper_jax.train import head_fit

    run = Path(args.run)
    for needed in (run / "teachers" / "manifest.json", run / "eval" / "teacher_agreement_vectors.npy"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: --run must be a finished `jasper-jax demo` folder")
    store = TeacherStore(run / "teachers")
    rows = np.arange(min(args.rows, len(store)))
    teacher = normalized(store.teacher_vectors(rows).astype(np.float64))
    held_out_teacher = np.load(run / "eval" / "teacher_agreement_vectors.npy").astype(np.float64)
    held_out, _ = news_split(fetch_news(), len(held_out_teacher) // 2)
    student = load_any(str(minilm_path()))
    features = pooled_outputs(student, store.texts(rows), args.max_length)
    held_out_texts = [a.text for a in held_out] + [a.title for a in held_out]
    held_out_features = pooled_outputs(student, held_out_texts, args.max_length)
    augmented = np.concatenate([held_out_features, np.ones((len(held_out_features), 1))], axis=1)

    plain = statistics(features, teacher)
    plain_errors = {}  # one ridge for every column: the smallest held-back error summed over the columns
    for ridge in head_fit.RIDGES:
        weights = head_fit.ridge_head(plain["fit_gram"], plain["fit_cross"], ridge)
        plain_errors[ridge] = float(
            np.sum(weights * (plain["validation_gram"] @ weights)) - 2 * np.sum(weights * plain["validation_cross"])
        )
    plain_ridge = min(plain_errors, key=plain_errors.get)
    directions = statistics(features, teacher * np.linalg.norm(features, axis=1, keepdims=True))
    ridges = head_fit.validated_ridge(directions)
    heads = {
        "plain": head_fit.ridge_head(plain["gram"], plain["cross"], plain_ridge),
        "directions": head_fit.ridge_head(directions["gram"], directions["cross"], ridges),
    }

    print(f"run {run}: fit on {len(rows)} store texts; held-out: {len(held_out)} articles and their titles")
    print(f"plain fit ridge {plain_ridge:g}; per-column ridges {head_fit.describe_ridges(ridges)}")
    print("| vectors | mean cosine | similarity MSE | News nDCG@10 |\n|---|---|---|---|")
    rows_out = {
        "concatenated teacher": held_out_teacher,
        "undistilled pooled": held_out_features,
        **{f"fc1 fit, {name}": augmented @ weights for name, weights in heads.items()},
    }
    for name, vectors in rows_out.items():
        result = scores(vectors, held_out_teacher)
        cosine = f"{result['mean_cosine']:.4f}" if "mean_cosine" in result else "-"
        print(f"| {name} | {cosine} | {result['similarity_mse']:.5f} | {result['ndcg_at_10']:.4f} |")


if __name__ == "__main__":
    main()
