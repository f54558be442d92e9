"""Prompt templates and class-name handling for CLIP text embeddings."""

from __future__ import annotations

from ovss_cli.errors import UsageError

# CAT-Seg's single template for the ViT recipes (the official string has no final period).
SINGLE_TEMPLATE = ["A photo of a {} in the scene"]

# The 7-template subset used by CoOp and CAT-Seg's "imagenet_select" option.
IMAGENET_SELECT_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def imagenet80_templates() -> list[str]:
    """The 80 ImageNet prompt templates of the CLIP paper (shipped by open_clip)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


TEMPLATE_SETS = {"single": lambda: list(SINGLE_TEMPLATE), "imagenet80": imagenet80_templates,
                 "imagenet7": lambda: list(IMAGENET_SELECT_TEMPLATES)}


def resolve_templates(spec: str | list[str]) -> list[str]:
    """A template-set name ('single', 'imagenet80', 'imagenet7') or an explicit list of '{}' templates."""
    if isinstance(spec, str):
        if spec not in TEMPLATE_SETS:
            raise UsageError(f"unknown template set '{spec}'; use one of {', '.join(TEMPLATE_SETS)} or a list")
        return TEMPLATE_SETS[spec]()
    templates = list(spec)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise UsageError(f"each prompt template needs exactly one '{{}}' for the class name: {bad or templates}")
    return templates


def first_synonym(name: str) -> str:
    """'building, edifice' -> 'building' (class lists separate synonyms with ', ')."""
    return name.split(",")[0].strip()


def build_prompts(class_names: list[str], templates: list[str], join_synonyms: bool = False) -> list[str]:
    """Class-major prompt list: prompts[t * P + p] = templates[p] filled with class t's first synonym
    (join_synonyms: with the whole name, synonyms and all, as CLIP-ES prompts 'person with clothes,people,human')."""
    return [template.format(name if join_synonyms else first_synonym(name))
            for name in class_names for template in templates]
