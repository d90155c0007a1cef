"""The successor recipe at scale (Jasper-Token-Compression-600M, arXiv 2511.14405; PAPER.md, last section):
a Qwen3-Embedding-0.6B student (mean pooling, a fresh 1024 -> 2048 head), a 2048-d teacher (Qwen3-Embedding-8B's
first 1024 dims | QZhou-Embedding's first 3072 dims summed in three 1024 segments, each normalised, joined,
normalised), token compression added after the first stage, contrastive learning last.

    jasper-jax train --config configs/jasper_token_compression.py \
        --config.model.source=/models/Qwen3-Embedding-0.6B --config.data.store=/data/jtc_teachers \
        --config.stages.stage3.pairs=/data/jtc_pairs --stages 1,2,3
    jasper-jax compile-check --config configs/jasper_token_compression.py --stage 2 --devices 8

| stage | trains     | compressor                                  | objective                   |
| 1     | everything | none                                        | cosine                      |
| 2     | everything | added; ratio sampled per step in [0.3, 1.0] | cosine                      |
| 3     | everything | ratio sampled per step in [0.3, 1.0]        | cosine + InfoNCE + score KL |

From the report and the released files: the student, pooling and head, the teachers and their transforms,
the compressor (SwiGLU MLP, threshold 80, default ratio 0.5, adaptive average pooling), texts up to 1024
tokens, the three losses of the last stage (InfoNCE over the positive, the hard negatives and the other
in-batch documents; KL between the score distributions). Not stated there, chosen here (change them freely):
batch sizes, learning rates, step counts, the training ratio range (the release recommends 0.3-0.8 at
inference and says the ratio varied during training), the temperatures (0.05) and the loss weights.

Teachers: the store holds the two teachers' raw vectors (`jasper-jax teachers encode` with both models,
named as below); `data.teacher_transforms` cuts them when the store is read. Stage 3 needs a pairs folder
(`jasper-jax pairs build` / `pairs mine`) whose texts are in the store.
"""

from jasper_jax.train.config_base import base_config, stage

TEACHER_DIM = 1024 + 1024
QWEN3_8B, QZHOU = "qwen3-embedding-8b", "qzhou-embedding"


def get_config():
    config = base_config()
    config.workdir = "runs/jasper_token_compression"
    config.seed = 666
    config.mesh = dict(data=1, fsdp=-1, tensor=1, dcn=dict(data=1, fsdp=1, tensor=1))
    config.model.source = "models/Qwen3-Embedding-0.6B"  # a Hugging Face / sentence-transformers folder
    config.model.family = "qwen3"  # for --config.model.source=random (compile-check builds from shapes)
    config.model.encoder = dict()  # Qwen3Config's defaults are Qwen3-Embedding-0.6B
    config.model.pooling = "mean"  # the report replaces the last-token pooling
    config.model.compute_dtype = "bfloat16"
    config.model.remat = "full"
    config.model.scan_layers = True
    config.model.token_compression = dict(threshold=80, ratio=0.5, train_ratio=(0.3, 1.0))
    config.data.store = "data/jtc_teachers"
    config.data.max_length = 1024
    config.data.prompt = ""
    config.data.teachers = (QWEN3_8B, QZHOU)
    config.data.teacher_transforms = {QWEN3_8B: dict(keep_dims=1024), QZHOU: dict(keep_dims=3072, sum_segments=3)}
    config.data.verify_checksums = False  # run `jasper-jax teachers check` once instead
    config.data.worker_threads = 8
    config.optimizer.warmup_fraction = 0.05
    config.optimizer.weight_decay = 0.01
    config.optimizer.clip_norm = 1.0
    config.checkpoint.every = 500
    config.checkpoint.keep = 3
    config.log_every = 10
    cosine_only = {"cosine_weight": 1.0, "similarity_weight": 0.0, "relative_similarity_weight": 0.0}
    config.stages.stage1 = stage(
        trainable=(".*",),
        heads={"fc1": TEACHER_DIM},
        init_from="model",
        batch_size=256,
        lr=1e-4,
        steps=20000,
        objective=cosine_only,
        token_compression=False,  # the compressor comes in stage 2
    )
    config.stages.stage2 = stage(
        trainable=(".*",),
        heads={"fc1": TEACHER_DIM},
        batch_size=256,
        lr=5e-5,
        steps=20000,
        objective=cosine_only,
        data_start="continue",
    )
    config.stages.stage3 = stage(
        trainable=(".*",),
        heads={"fc1": TEACHER_DIM},
        batch_size=64,  # x (1 + 7 negatives) documents of 1024 tokens: 128 needs 83 GB per device (RESULTS)
        lr=2e-5,
        steps=5000,
        pairs="data/jtc_pairs",
        pairs_query_prompt="",
        objective={**cosine_only, "infonce_weight": 1.0, "score_kl_weight": 1.0},
    )
    return config
