"""The whole demo pipeline on tiny inputs: corpus -> teacher store -> pairs -> stages 1-5 -> export -> eval -> report.

Teachers: MiniLM (JAX, from the pip package) and a tiny random BERT (PyTorch); the student starts from the
tiny random BERT; Lee / NewsArticles are tiny self-made files. Every artifact must exist and load, and a
rerun must skip every finished step, also in a moved copy of the run folder. Stage 4 is the contrastive
stage (training titles -> their articles, mined negatives), stage 5 the image stage.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.eval.eval_inputs import tiny_bert_export, write_lee_files, write_news_csv

pytestmark = pytest.mark.slow  # about 3 minutes: five training stages and ten evaluated models


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, minilm_folder):
    from jasper_jax.demo import DemoSettings, Teacher, run_demo

    root = tmp_path_factory.mktemp("demo")
    tiny_plain_folder = tiny_bert_export(root / "tiny_bert", {}, seed=1, tokenizer_folder=minilm_folder)
    overrides = [f"model.source={tiny_plain_folder}", "checkpoint.every=2", "data.worker_threads=1"]
    for stage in (1, 2, 3, 4, 5):
        overrides += [f"stages.stage{stage}.steps=3", f"stages.stage{stage}.batch_size=8"]
    overrides += [
        "stages.stage5.images.generate.train=24",
        "stages.stage5.images.generate.heldout=12",
        "stages.stage1.head_fit_batches=2",
        "stages.stage3.head_fit_batches=2",
    ]
    settings = DemoSettings(
        out=root / "demo",
        overrides=overrides,
        teachers=[Teacher("minilm", str(minilm_folder), "jax"), Teacher("tiny", str(tiny_plain_folder), "torch")],
        lee=write_lee_files(root / "lee"),
        news=write_news_csv(root / "news.csv"),
        heldout_size=10,
        corpus_size=48,
        max_length=32,
        batch_size=8,
        progress=False,
    )
    report = run_demo(settings)
    return settings, report


def test_every_artifact_exists_and_loads(demo_run):
    from sentence_transformers import SentenceTransformer

    from jasper_jax.data.check import check_store
    from jasper_jax.data.store import TeacherStore
    from jasper_jax.loader import load_any

    settings, report = demo_run
    out = settings.out
    corpus = [json.loads(line) for line in (out / "data" / "corpus.jsonl").read_text().splitlines()]
    assert 20 <= len(corpus) <= 48  # the tiny sources run out before the requested size
    held_out = {json.loads(line)["text"] for line in (out / "data" / "excluded.jsonl").read_text().splitlines()}
    assert not held_out & {row["text"] for row in corpus}, "held-out texts leaked into the training corpus"
    # general-domain text beside the news: the kit's Wikipedia paragraphs at their share, without markup
    wikipedia = [row["text"] for row in corpus if row["source"] == "wikipedia"]
    assert abs(len(wikipedia) - settings.corpus_size * settings.wikipedia_ratio) < 1  # its share, to one text
    assert not [text for text in wikipedia if re.search(r"\[\[|\{\{|<ref|'{3}", text)]
    # each training title comes right before (the start of) its own article among the news rows, so the two
    # share a batch in the trainer's store order
    paired = [json.loads(line)["text"] for line in (out / "data" / "news_paired_train.jsonl").read_text().splitlines()]
    article_of = dict(zip(paired[0::2], paired[1::2]))
    news_rows = [row["text"] for row in corpus if row["source"] == "news"]
    titles_seen = [i for i, text in enumerate(news_rows[:-1]) if text in article_of]
    followed = [
        " ".join(news_rows[i + 1].split())[:40] in " ".join(article_of[news_rows[i]].split()) for i in titles_seen
    ]
    # (an article the length filter or deduplication drops leaves its title followed by the next title)
    assert len(titles_seen) >= 5 and np.mean(followed) >= 0.9, (len(titles_seen), followed)

    assert check_store(out / "teachers", ["minilm", "tiny"]) == []
    assert TeacherStore(out / "teachers").dim == 384 + 32

    for stage in (1, 2, 3, 4):
        metrics = (out / "train" / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3]
        loaded = load_any(out / "train" / f"stage{stage}")
        assert loaded.config.heads["fc1"] == 416
    for stage in (3, 4):
        assert set(load_any(out / "train" / f"stage{stage}").config.heads) == {"fc1", "fc2", "fc3", "fc4"}

    model = SentenceTransformer(str(out / "export"), device="cpu", trust_remote_code=True)
    vectors = model.encode(["a football match"], normalize_embeddings=False)
    assert vectors.shape == (1, 416) and np.isclose(np.linalg.norm(vectors), 1.0, atol=1e-5)

    names = [
        "teacher_minilm",
        "teacher_tiny",
        "teachers_concatenated",
        "undistilled",
        "stage1",
        "stage2",
        "stage3",
        "stage4",
        "export_pytorch",
    ]
    for name in names:
        result = json.loads((out / "eval" / f"{name}.json").read_text())
        for head, values in result["scores"].items():
            assert -1 <= values["lee_spearman"] <= 1 and 0 <= values["news_ndcg_at_10"] <= 1, (name, head, values)
    for name in ("stage1", "stage2", "stage3", "stage4", "export_pytorch"):
        agreement = json.loads((out / "eval" / f"{name}.json").read_text())["agreement"]
        assert -1 <= agreement["mean_cosine"] <= 1 and agreement["similarity_mse"] >= 0, (name, agreement)
    export = json.loads((out / "eval" / "export_pytorch.json").read_text())
    assert export["max_backend_difference"] <= 1e-3


def test_stage5_images_are_trained_exported_and_evaluated(demo_run):
    settings, report = demo_run
    out = settings.out
    assert [
        json.loads(line)["step"] for line in (out / "train" / "stage5" / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2, 3]
    assert (out / "export" / "vision" / "jasper_image.json").exists() and (out / "export" / "jasper_vision.py").exists()
    stage5, stage4 = (json.loads((out / "eval" / f"stage{n}.json").read_text()) for n in (5, 4))
    # stage 5 trains only the vision tower: its text scores are stage 4's, and say so
    assert stage5["text_scores_from"] == "stage4" and stage5["scores"] == stage4["scores"]
    assert "stage5 trained only its vision tower" in report.read_text()
    retrieval = stage5["image_retrieval"]
    assert set(retrieval) == {"fc1", "fc2", "fc3", "fc4"}
    assert retrieval["fc1"]["pairs"] == 12 and retrieval["fc1"]["chance_r_at_1"] == 1 / 12
    export = json.loads((out / "eval" / "export_pytorch.json").read_text())
    assert set(export["image_retrieval"]) == {"fc1", "fc2", "fc3", "fc4"}
    assert min(export["image_agreement"].values()) >= 0.9999, export["image_agreement"]
    text = report.read_text()
    assert "Image -> caption retrieval (image stage)" in text
    assert "image -> caption retrieval (fc1) above chance" in text

    text = report.read_text()
    for section in ("## Scores", "## Held-out agreement", "## Quality targets", "losses_stage4.png"):
        assert section in text, section
    for png in ("losses_stage1.png", "losses_stage2.png", "losses_stage4.png", "score_vs_dim.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG", png
    targets = json.loads((out / "report" / "targets.json").read_text())
    assert any("agree within 1e-3" in t["target"] and t["met"] for t in targets)
    missed = sum(not t["met"] for t in targets)
    assert missed and f"{missed} target(s) MISSED. What was tried" in text  # a tiny random student misses some


def test_stage4_is_contrastive_on_training_titles_and_their_articles(demo_run):
    """Every example: a training title, its own article, mined negatives that are other training articles;
    nothing held out; the stage's settings hold no absolute path; the contrastive terms were trained."""
    import dataclasses
    from pathlib import Path

    from jasper_jax.data.pairs import PairsIndex
    from jasper_jax.demo import training_run
    from jasper_jax.eval.tasks import news_split

    settings, report = demo_run
    out = settings.out
    stage = training_run(settings).run.stages[4]
    assert stage.is_pair_stage and stage.pairs == "pairs/news_mined"
    strings = [v for v in dataclasses.asdict(stage).values() if isinstance(v, str) and v]
    assert strings and not [v for v in strings if Path(v).is_absolute()], strings

    held_out, train = news_split(settings.news, settings.heldout_size)
    article_of = {a.title.strip(): a.text.strip() for a in train}
    excluded = {json.loads(line)["text"] for line in (out / "data" / "excluded.jsonl").read_text().splitlines()}
    index = PairsIndex(out / "train" / "pairs" / "news_mined")
    store_texts = set(index.store.texts(range(len(index.store))))
    in_store = [t for t in article_of if t in store_texts and article_of[t] in store_texts]
    assert len(index) == len(in_store) >= 8 and index.negatives == settings.pair_negatives
    for row in np.asarray(index.rows):
        query, positive, *negatives = index.store.texts([int(r) for r in row if r >= 0])
        assert article_of[query] == positive, query
        assert negatives and positive not in negatives and set(negatives) <= set(article_of.values())
        assert not {query, positive, *negatives} & excluded
    metrics = [json.loads(line) for line in (out / "train" / "stage4" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["infonce"]) and np.isfinite(m["score_kl"]) for m in metrics), metrics


def test_report_targets_are_judged_from_the_numbers(demo_run):
    """MET / MISSED of the retrieval, Lee and time targets follow from eval/*.json and done/*.json."""
    settings, report = demo_run
    out = settings.out
    targets = {t["target"]: t for t in json.loads((out / "report" / "targets.json").read_text())}
    final, base, top = (
        json.loads((out / "eval" / f"{name}.json").read_text())
        for name in ("stage4", "undistilled", "teachers_concatenated")
    )
    student, undistilled = final["scores"]["fc1"], base["scores"]["pooled"]
    lee = targets["Lee Spearman: distilled fc1 >= undistilled"]
    assert lee["met"] == (student["lee_spearman"] >= undistilled["lee_spearman"])
    news = targets["News nDCG@10: closes >= half the gap to the concatenated teacher"]
    gap = top["scores"]["pooled"]["news_ndcg_at_10"] - undistilled["news_ndcg_at_10"]
    if gap > 0:
        closed = (student["news_ndcg_at_10"] - undistilled["news_ndcg_at_10"]) / gap
        assert news["met"] == (closed >= 0.5) and f"closed {closed:.0%}" in news["detail"], news
    assert news["detail"].startswith("stage4 ") and f"cosine {final['agreement']['mean_cosine']:.4f}" in news["detail"]
    seconds = sum(json.loads(p.read_text())["seconds"] for p in (out / "done").glob("*.json"))
    budget = targets["the demo finishes within 25 minutes (sum of its steps)"]
    assert budget["met"] == (seconds <= 25 * 60) and f"({seconds:.0f} s)" in budget["detail"]
    text = report.read_text()
    for target in targets.values():
        assert f"| {target['target']} | {'MET' if target['met'] else '**MISSED**'} |" in text, target
    assert "stage 4 (contrastive): pairs `pairs/news_mined`" in text


def test_rerun_skips_finished_steps(demo_run, capsys):
    from jasper_jax.demo import run_demo

    settings, report = demo_run
    before = {p: p.stat().st_mtime_ns for p in (settings.out / "eval").glob("*.json")}
    capsys.readouterr()
    run_demo(settings)
    printed = capsys.readouterr().out
    for step in ("corpus", "teachers"):
        assert f"{step}: done before; skipped" in printed, printed
    for stage in (1, 2, 3, 4, 5):
        assert f"stage {stage}: complete" in printed, printed
    assert re.search(r"export: stage5/checkpoints/3@\d+ exported before; skipped", printed), printed
    assert printed.count("done before; skipped") == 2 + 10, printed  # corpus, teachers, ten evaluations
    assert "made before; kept" in printed, printed  # the pairs folder
    assert {p: p.stat().st_mtime_ns for p in (settings.out / "eval").glob("*.json")} == before


def test_no_progress_reaches_the_trainer(demo_run):
    import dataclasses

    from jasper_jax.demo import training_run

    settings, report = demo_run
    assert settings.progress is False and training_run(settings).run.progress is False
    assert training_run(dataclasses.replace(settings, progress=True)).run.progress is True


def test_a_rerun_with_other_data_settings_is_refused_and_changes_nothing(demo_run):
    import dataclasses

    from jasper_jax.demo import DemoError, run_demo

    settings, report = demo_run
    before = {p: p.stat().st_mtime_ns for p in settings.out.rglob("*") if p.is_file()}
    with pytest.raises(DemoError, match=r"max_length: 32 there, 16 now"):
        run_demo(dataclasses.replace(settings, max_length=16))
    assert {p: p.stat().st_mtime_ns for p in settings.out.rglob("*") if p.is_file()} == before


def test_a_stage_trained_again_to_the_same_step_is_evaluated_again(tmp_path):
    """After a stage folder is deleted and trained again, its final step is the same number: the evaluation
    made from the old save must not count as done (nor the export made from it)."""
    import dataclasses

    from jasper_jax.demo import EvaluatedModel, _evaluated_before, _made_from, checkpoint_identity

    stage = tmp_path / "train" / "stage3"

    def save(step, commit_ns):
        folder = stage / "checkpoints" / str(step)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "_CHECKPOINT_METADATA").write_text(json.dumps({"commit_timestamp_nsecs": commit_ns}))

    save(100, 5)
    save(150, 7)
    model = EvaluatedModel("stage3", "stage", str(stage), "jax", stage=3)
    first = _made_from(model)
    assert first == checkpoint_identity(stage, 150) == "stage3/checkpoints/150@7"
    result = tmp_path / "stage3.json"
    result.write_text(json.dumps({"made_from": first, "agreement": {}}))
    assert _evaluated_before(result, dataclasses.replace(model, made_from=first), tmp_path / "teacher.npy")
    save(150, 9)  # trained again: the same step, another save
    again = _made_from(model)
    assert again != first and not _evaluated_before(
        result, dataclasses.replace(model, made_from=again), tmp_path / "teacher.npy"
    )


def test_a_rerun_with_other_training_settings_is_refused_and_changes_nothing(demo_run, capsys):
    """A finished stage 3 would otherwise be skipped silently and its scores reported under the new lr."""
    import dataclasses

    from jasper_jax.demo import DemoError, run_demo

    settings, report = demo_run
    before = {p: p.stat().st_mtime_ns for p in settings.out.rglob("*") if p.is_file()}
    capsys.readouterr()
    changed = dataclasses.replace(settings, overrides=[*settings.overrides, "stages.stage3.lr=0.125"])
    with pytest.raises(DemoError, match="training refused to start") as refused:
        run_demo(changed)
    error = str(refused.value)
    assert "stage 3:" in error and "stages.stage3.lr:" in error and "0.125 now" in error, error
    assert {p: p.stat().st_mtime_ns for p in settings.out.rglob("*") if p.is_file()} == before


def test_data_from_another_run_skips_the_data_steps_and_refuses_other_data_settings(demo_run, tmp_path, capsys):
    import dataclasses

    from jasper_jax.demo import DemoError, run_demo

    settings, report = demo_run
    again = dataclasses.replace(settings, out=tmp_path / "again", data_from=settings.out, stages=[1])
    with pytest.raises(DemoError, match=r"--data-from .*max_length: 32 there, 16 now"):
        run_demo(dataclasses.replace(again, max_length=16))
    assert not [p for p in again.out.rglob("*") if p.is_file()]  # refused before anything was written
    capsys.readouterr()
    again_report = run_demo(again)
    assert again_report.exists()
    printed = capsys.readouterr().out
    for step in ("corpus", "teachers", "eval teacher_minilm", "eval teachers_concatenated", "eval undistilled"):
        assert f"{step}: done before; skipped" in printed, printed
    assert "stage 1: done" in printed and "eval stage1\n" in printed.replace("\r", ""), printed
    store = sorted(p.relative_to(settings.out) for p in (settings.out / "teachers").rglob("*") if p.is_file())
    assert store and all((again.out / p).read_bytes() == (settings.out / p).read_bytes() for p in store)
    # the evaluations it skipped count in its total with the time they took in the source run
    copied = [p for p in (settings.out / "eval").glob("*.json") if p.stem.startswith(("teacher", "undistilled"))]
    expected = sum(json.loads(p.read_text())["seconds"] for p in copied)
    record = json.loads((again.out / "done" / "copied_evaluations.json").read_text())
    assert len(copied) >= 3 and expected > 0 and record["seconds"] == pytest.approx(expected, rel=1e-9)
    assert f"copied_evaluations {record['seconds']:.0f}" in again_report.read_text()


def test_corpus_settings_out_of_range_are_refused_before_anything(demo_run):
    import dataclasses

    from jasper_jax.demo import DemoError, check_data_settings

    settings, report = demo_run
    path = settings.out / "settings.json"
    recorded = path.read_text()
    with pytest.raises(DemoError, match=r"--chunk-fraction\): chunk_fraction is a probability .* got 2.0"):
        check_data_settings(dataclasses.replace(settings, chunk_fraction=2.0))
    with pytest.raises(DemoError, match=r"chunk_fraction: 0.0 there, 0.5 now"):
        check_data_settings(dataclasses.replace(settings, chunk_fraction=0.5))
    with pytest.raises(DemoError, match=r"--wikipedia-ratio 0.95: give a share in \[0, 1\) that leaves the news"):
        check_data_settings(dataclasses.replace(settings, wikipedia_ratio=0.95))
    with pytest.raises(DemoError, match=r"wikipedia_ratio: 0.2 there, 0.3 now"):
        check_data_settings(dataclasses.replace(settings, wikipedia_ratio=0.3))
    assert path.read_text() == recorded


def test_eval_redoes_what_a_missing_teacher_vector_file_left_incomplete(demo_run, capsys):
    """The held-out teacher vectors are written by the concatenated teacher's evaluation and read by every
    student's agreement: without them, eval must redo that evaluation and every student result lacking an
    agreement, and leave the complete results alone."""
    from jasper_jax.demo import evaluate_all, training_run

    settings, report = demo_run
    folder = settings.out / "eval"
    teacher_file = folder / "teacher_agreement_vectors.npy"
    teacher_vectors = np.load(teacher_file)
    stage3 = json.loads((folder / "stage3.json").read_text())
    teacher_file.unlink()
    (folder / "stage3.json").write_text(json.dumps({k: v for k, v in stage3.items() if k != "agreement"}))
    untouched = {
        p: p.stat().st_mtime_ns
        for p in folder.glob("*.json")
        if p.name not in ("teachers_concatenated.json", "stage3.json")
    }
    capsys.readouterr()
    evaluate_all(settings, training_run(settings))
    printed = capsys.readouterr().out
    assert "eval teachers_concatenated\n" in printed and "eval stage3\n" in printed, printed
    np.testing.assert_allclose(np.load(teacher_file), teacher_vectors, atol=1e-6)
    redone = json.loads((folder / "stage3.json").read_text())["agreement"]
    for key, value in stage3["agreement"].items():
        assert redone[key] == pytest.approx(value, abs=1e-6), key
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched


def test_a_moved_run_folder_still_resumes(demo_run, tmp_path, capsys):
    """The settings name the pairs folder relative to the workdir: a copy of the run elsewhere skips every
    finished stage instead of refusing them as trained with other settings."""
    import dataclasses
    import shutil

    from jasper_jax.demo import run_demo

    settings, report = demo_run
    moved = tmp_path / "moved"
    shutil.copytree(settings.out, moved)
    capsys.readouterr()
    assert run_demo(dataclasses.replace(settings, out=moved)).exists()
    printed = capsys.readouterr().out
    for stage in (1, 2, 3, 4, 5):
        assert f"stage {stage}: complete" in printed, printed
    assert f"pairs: {moved / 'train' / 'pairs' / 'news_mined'} made before; kept" in printed, printed
