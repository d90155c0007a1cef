"""jasper-jax: distil large embedding teachers into a small JAX/Flax student (Jasper and Stella, 2412.19048)."""

__version__ = "0.1.0"
