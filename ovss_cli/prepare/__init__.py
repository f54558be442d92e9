"""Converters from the official dataset downloads to the prepared (CAT-Seg / detectron2) layout.

Entry points: `pipeline.prepare_dataset` (get raw files, convert, check counts) and
`verify.verify_dataset` (check an existing prepared folder). `registry.DATASETS` lists the
datasets with their official archives.
"""
