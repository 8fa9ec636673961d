"""Server-side orchestration: the one round loop and the workflows that use it."""
