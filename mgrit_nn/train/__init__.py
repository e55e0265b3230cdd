"""The training loop and what it owns: optimizers, schedules, checkpoint glue."""
