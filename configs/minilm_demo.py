"""The default CPU run: the offline kit's all-MiniLM-L6-v2 as student, MiniLM + MPNet teachers (384 + 768).

    jasper-jax teachers encode ...            # writes the store named by data.store (see README)
    jasper-jax train --config configs/minilm_demo.py [--config.data.store=PATH]

Heads: fc1 at the teachers' 1152 dims (3 losses), started at its ridge-regression fit of the teacher's
directions on 2,048 texts (head_init="fit"; the MiniLM teacher's block fits exactly, as the identity),
and reduced fc2 256 / fc3 128 / fc4 64 added in stage 3 (similarity + relative similarity), started at
fc1's principal directions (on 1,024 texts). Stage 2 trains fc1 and the last 2 of MiniLM's 6 layers. Texts
are cut at 64 tokens, so that the whole run fits in 25 minutes on 2 CPU cores, with a cold XLA cache and at the
machine's slower hours; for that budget stages 2, 3, 4 and 5 run 60, 40, 45 and 50 steps (100, 80, 60 and 100
until 2026-12-07, which took 28.4 minutes at such an hour; 150, 150, 60 and 200 before that). The runs that chose
these settings, with their scores, are in benchmarks/RESULTS.md ("make demo").
Stage 4 is the contrastive stage of the successor recipe (arXiv 2511.14405): the training NewsArticles
titles as queries, their articles as positives and 2 hard negatives each mined by teacher similarity
(`jasper-jax pairs mine`; the demo's `pair_negatives`), every text already in the store: 32 titles and 96
articles a step. `pairs` is relative to the workdir: the demo writes `OUT/train/pairs/news_mined`; without the
demo, build it as the README says under "Pair data". InfoNCE and the score KL to the teacher weigh 4 each at
lr 1e-4 (the Jasper terms at their defaults; the reduced heads at 0.1 as in stage 3). At the same cost per run,
2 mined negatives for 45 steps close 53% of the retrieval gap where 1 for 60 steps closed 43% and in-batch
negatives alone 32% (benchmarks/RESULTS.md, "the demo in its budget").
Stage 5 adds a small random SigLIP tower (64 x 64 images, 8 x 8 patches, 4 layers of 128) and 16 image
tokens, and trains only the tower on generated coloured-shape scenes (`workdir/images`, held-out captions
for `jasper-jax eval --images`): the image of each pair learns the student's own caption vector per head.
"""

from jasper_jax.train.config_base import base_config, stage
from jasper_jax.train.image_stage import image_stage_config

TEACHER_DIM = 384 + 768
PAIRS = "pairs/news_mined"  # relative to the workdir (a moved run folder still resumes)


def get_config():
    """This run's ConfigDict (what `jasper-jax train --config configs/minilm_demo.py` reads)."""
    config = base_config()
    config.workdir = "runs/minilm_demo"
    config.model.source = "minilm"  # the offline kit's all-MiniLM-L6-v2 (an alias of jasper_jax.loader)
    config.model.compute_dtype = "float32"
    config.model.vector_dropout = 0.0
    config.data.store = "runs/minilm_demo/teachers"
    config.data.max_length = 64
    config.data.verify_checksums = False
    config.checkpoint.every = 50
    config.checkpoint.keep = 2
    config.log_every = 1
    # a fifth of each stage warms up: the official 5% would be 5 of our 100 steps
    config.optimizer.warmup_fraction = 0.2
    # fc1 starts at its closed-form ridge fit (head_init="fit"); the few steps refine it under the three losses
    config.stages.stage1 = stage(
        trainable=("heads/fc1/.*",),
        heads={"fc1": TEACHER_DIM},
        init_from="model",
        head_init="fit",
        head_fit_batches=64,
        batch_size=32,
        lr=2e-4,
        steps=60,
    )
    # the paper's lr scaled to our batch (8e-5 at 128 -> 5e-5 at 32); a higher one moves the unfrozen layers
    # away from the teacher
    config.stages.stage2 = stage(
        trainable=("heads/fc1/.*",),
        trainable_last_layers=2,
        heads={"fc1": TEACHER_DIM},
        batch_size=32,
        lr=5e-5,
        steps=60,
    )
    # lr 2e-5: at 4e-5 held-out agreement fell further in stage 3. The reduced heads start at fc1's principal
    # directions on 1,024 texts (half of fc1's fit, for the budget); their terms weigh 0.1, which sets how hard
    # they pull the shared encoder away from fc1 (Adam still moves them at the full lr)
    config.stages.stage3 = stage(
        trainable=(".*",),
        heads={"fc1": TEACHER_DIM, "fc2": 256, "fc3": 128, "fc4": 64},
        head_init="fit",
        head_fit_batches=32,
        batch_size=32,
        lr=2e-5,
        steps=40,
        objective={"reduced_head_weight": 0.1},
    )
    # the contrastive stage: InfoNCE of each title against every article of the global batch (its own, the
    # mined negatives and the other titles' articles), the score KL to the teacher and the Jasper terms
    config.stages.stage4 = stage(
        trainable=(".*",),
        heads={"fc1": TEACHER_DIM, "fc2": 256, "fc3": 128, "fc4": 64},
        batch_size=32,
        lr=1e-4,
        steps=45,
        pairs=PAIRS,
        objective={"infonce_weight": 4.0, "score_kl_weight": 4.0, "reduced_head_weight": 0.1},
    )
    config.stages.stage5 = image_stage_config(
        image_tokens=16,
        vision_encoder=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        generate=dict(train=2000, heldout=200, seed=0, size=64),
        heads={"fc1": TEACHER_DIM, "fc2": 256, "fc3": 128, "fc4": 64},
        batch_size=32,
        lr=1e-3,
        steps=50,
    )
    return config
