"""NNX encoders (BERT, MPNet, Qwen2, Qwen3), shared layers, pooling and the Jasper student."""

from jasper_jax.models.bert import BertConfig, BertEncoder
from jasper_jax.models.mpnet import MPNetConfig, MPNetEncoder
from jasper_jax.models.pooling import l2_normalize, pool
from jasper_jax.models.qwen2 import Qwen2Config, Qwen2Encoder
from jasper_jax.models.qwen3 import Qwen3Config, Qwen3Encoder
from jasper_jax.models.student import JasperStudent, StudentConfig, count_parameters, paper_student_config

__all__ = [
    "BertConfig",
    "BertEncoder",
    "MPNetConfig",
    "MPNetEncoder",
    "Qwen2Config",
    "Qwen2Encoder",
    "Qwen3Config",
    "Qwen3Encoder",
    "JasperStudent",
    "StudentConfig",
    "count_parameters",
    "paper_student_config",
    "pool",
    "l2_normalize",
]
