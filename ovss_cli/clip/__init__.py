"""CLIP on open_clip_torch: loading, dense features, prompts and text-embedding cache."""
