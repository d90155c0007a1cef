"""Offline evaluation: mteb tasks over local files (`tasks`), mteb encoders over our models (`encoders`),
running them per head and comparing backends (`run`), the `jasper-jax eval` command (`cli`) and the demo
report (`report`)."""
