"""Benchmarks in the prepared (detectron2/CAT-Seg) layout, the built-in toy benchmark and transforms."""
