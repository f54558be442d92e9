"""Weakly-supervised segmentation: CLIP-ES pseudo-labels from image-level labels and VPL vision prototypes.

Modules, one job each: `names` (prompt names and background words), `datasets` (image-level
labels and the VOC / COCO / toy splits), `clip_features` (frozen CLIP with attention maps and a
differentiable last block), `gradcam` (softmax-GradCAM), `affinity` (class-aware attention
affinity), `crf` (dense CRF mean-field in torch), `clip_es` (CAMs -> pseudo-labels), `vpl`
(vision prototypes), `prototype_store` (prototype files and their sidecar), `writer` (atomic,
resumable PNG output) and `runner` (the loops the `ovss pseudolabel` / `ovss prototypes`
commands run).
"""
