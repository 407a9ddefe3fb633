"""Training the models: the stages, the data, checkpoints."""
