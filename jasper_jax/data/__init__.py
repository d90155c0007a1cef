"""Data: corpus building, teacher vector stores, tokenisation and the Grain input pipeline.

Modules (imported on use, so the command line stays fast):
- `corpus` / `corpus_cli`: `jasper-jax corpus build` (sources, the paper's preprocessing, mixing).
- `store`: the on-disk teacher store format and `TeacherStore` (memory-mapped random access).
- `teacher_encoding`: `encode_store` (resumable, shard by shard) and the teacher encoders (PyTorch / JAX).
- `rag_import`: the official RAG-Retrieval float32 memmap + text.jsonl -> a store.
- `check`: `check_store`, the validation run by `jasper-jax teachers check` and at the start of training.
- `teachers_cli`: `jasper-jax teachers encode | import-rag | check`.
- `tokenization`: the shared tokenizer (`load_tokenizer`, length buckets, padding).
- `pipeline`: `make_train_iterator`, global sharded batches with exact resume.
"""
