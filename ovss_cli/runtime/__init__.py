"""The ground floor every loop stands on: distributed launch, precision, seeding, checkpoint files.

Nothing here knows about methods, recipes or the training loop.
"""
