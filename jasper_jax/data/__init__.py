"""Data: corpus building, teacher vector stores, tokenisation and the Grain input pipeline."""
