"""Cost model of a training step: FLOPs per part, achieved FLOP/s next to the device's peak, operator profiles."""
