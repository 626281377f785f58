"""The training core: one TrainConfig trained, checkpointed, retrained; knows nothing of studies (docs/architecture.md)."""
