"""The training loop and what it is made of: batch sources, optimiser and schedule, loss, early stopping,
several processes."""
