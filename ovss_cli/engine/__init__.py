"""Method-agnostic machinery: distributed launch, precision, training loop, checkpoints, logging."""
