"""One training framework for every model: a task (what to predict) + Ray Train (how to scale)."""
