"""ovss: semantic segmentation with CLIP where the classes are free text."""

__version__ = "0.1.0"
