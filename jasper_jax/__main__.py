"""`python -m jasper_jax` is the `jasper-jax` command."""

from jasper_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
