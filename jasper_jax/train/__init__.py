"""The trainer: mesh and sharding rules, optimizer and freezing, the jitted step, Orbax checkpoints,
multi-host initialisation, the stage loop and the `train` / `compile-check` commands."""
