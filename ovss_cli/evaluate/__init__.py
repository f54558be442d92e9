"""Confusion-matrix metrics, sliding-window inference and benchmark evaluation."""
