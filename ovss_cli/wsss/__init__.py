"""Weakly-supervised segmentation: CLIP-ES pseudo-labels from image-level labels and VPL vision prototypes.

Modules, one job each: `config` (the recipe sections clip_es:, prototypes: and the CRF settings),
`names` (prompt names and background words), `clip_features` (frozen CLIP with attention maps and a
differentiable last block), `gradcam` (softmax-GradCAM), `affinity` (class-aware attention
affinity), `crf` (dense CRF mean-field in torch), `clip_es` (CAMs -> pseudo-labels), `vpl`
(vision prototypes), `prototype_store` (prototype files and their sidecar) and `writer` (atomic,
resumable PNG output). The image-level label sets live in `ovss_cli.data.image_labels`, the loops
of `ovss pseudolabel` / `ovss prototypes` in `ovss_cli.engine.pseudolabel`, VPL's decoder on
frozen CLIP in `ovss_cli.methods.vpl`.
"""
