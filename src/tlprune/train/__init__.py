"""Training: the optimisation loop, evaluation and the fine-tune job."""
