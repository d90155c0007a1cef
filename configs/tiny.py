"""Tiny: a random 2-layer BERT student on a generated teacher store; stages 1-3 in about a minute.

    jasper-jax train --config configs/tiny.py --config.workdir=/tmp/tiny

The corpus, tokenizer and two-teacher store (24 + 8 = 32 dims) are generated under workdir/data on the
first run. Stages follow the paper's recipe at toy scale: stage 1 trains fc1, stage 2 fc1 + the last
encoder layer, stage 3 everything with reduced heads fc2 (16) and fc3 (8) added.
"""

from jasper_jax.train.config_base import base_config, stage


def get_config():
    config = base_config()
    config.workdir = "runs/tiny"
    config.seed = 0
    config.model.source = "random"
    config.model.family = "bert"
    config.model.encoder = dict(
        vocab_size=204,  # 4 special tokens + data.generate.words
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config.model.vector_dropout = 0.1  # exercises the per-step dropout reseeding (resume, multi-process)
    config.data.generate.enabled = True
    config.data.generate.rows = 512
    config.data.generate.words = 200
    config.data.generate.teacher_dims = (24, 8)
    config.data.max_length = 32
    config.data.worker_threads = 1
    config.data.prefetch = 2
    config.optimizer.warmup_fraction = 0.1
    config.checkpoint.every = 10
    config.checkpoint.keep = 2
    config.max_consecutive_nonfinite = 3
    config.stages.stage1 = stage(
        trainable=("heads/fc1/.*",), heads={"fc1": 32}, init_from="model", batch_size=16, lr=3e-3, steps=20
    )
    config.stages.stage2 = stage(
        trainable=("heads/fc1/.*",), trainable_last_layers=1, heads={"fc1": 32}, batch_size=16, lr=2e-3, steps=20
    )
    config.stages.stage3 = stage(
        trainable=(".*",),
        heads={"fc1": 32, "fc2": 16, "fc3": 8},
        head_init="prefix:fc1",
        batch_size=16,
        lr=1e-3,
        steps=20,
    )
    return config
