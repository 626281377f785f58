"""Workers: the training core (TrainConfig -> trained model) and the worker that pulls trials."""
