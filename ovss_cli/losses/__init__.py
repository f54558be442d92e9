"""Losses that are plain maths: small pure functions on tensors, no models and no recipes."""
