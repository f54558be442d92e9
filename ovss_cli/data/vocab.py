"""Class-name lists shipped with ovss (index = train id)."""

from __future__ import annotations

import functools
import json
from importlib import resources

from ovss_cli.errors import UsageError
from ovss_cli.textutil import did_you_mean

VOCABULARIES = ("coco_stuff171", "ade150", "ade847", "pc59", "pc459", "voc20", "voc20b", "voc21", "coco81")


@functools.lru_cache(maxsize=None)
def load_vocabulary(name: str) -> tuple[str, ...]:
    """The class names of a shipped vocabulary, e.g. 'ade150'."""
    if name not in VOCABULARIES:
        raise UsageError(f"unknown vocabulary '{name}'{did_you_mean(name, VOCABULARIES)}; "
                         f"known: {', '.join(VOCABULARIES)}")
    text = resources.files("ovss_cli.data").joinpath("vocab", f"{name}.json").read_text(encoding="utf-8")
    return tuple(json.loads(text))


def parse_class_list(text: str) -> tuple[str, ...]:
    """'cat; grass; sky' or 'cat, grass, sky' -> names. Use ';' to keep synonyms ('building, edifice; sky')."""
    separator = ";" if ";" in text else ","
    names = tuple(part.strip() for part in text.split(separator) if part.strip())
    if not names:
        raise UsageError("--classes is empty; give class names like --classes 'cat, grass, sky'")
    return names
