"""Recipes: one YAML file per experiment, validated strictly before any heavy work.

A recipe composes sections owned by the modules that use them:

    name, method, seed, deterministic
    clip:      ovss_cli.clip.config.ClipConfig
    finetune:  ovss_cli.peft.config.FinetuneConfig
    decoder:   ovss_cli.decoder.config.DecoderConfig
    loss:      ovss_cli.methods.config.LossConfig
    infoclip:  ovss_cli.methods.infoclip_config.InfoClipConfig (used by method infoclip)
    data:      ovss_cli.engine.config.DataConfig
    optim:     ovss_cli.engine.config.OptimConfig
    train:     ovss_cli.engine.config.TrainConfig

`method: catseg` is the CAT-Seg model; H-CLIP is the same model with `finetune.mode: hclip`;
`method: infoclip` adds InfoCLIP's distillation from the frozen pretrained CLIP.
Dotted `key=value` overrides apply to the YAML before validation, so they are checked the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ovss_cli.clip.config import ClipConfig
from ovss_cli.config import apply_overrides, from_dict, to_dict
from ovss_cli.decoder.config import DecoderConfig
from ovss_cli.engine.config import DataConfig, OptimConfig, TrainConfig
from ovss_cli.errors import UsageError
from ovss_cli.methods.config import LossConfig
from ovss_cli.methods.infoclip_config import InfoClipConfig
from ovss_cli.peft.config import FinetuneConfig

METHODS = ("catseg", "infoclip")
DISTILLATION_METHODS = ("infoclip",)  # trained with `ovss distill`: a frozen teacher guides the student


@dataclass
class Recipe:
    name: str = "catseg"
    """Run name: runs go to runs/<name>/<timestamp>/."""
    method: str = "catseg"
    """Model family: 'catseg' (CAT-Seg; with finetune.mode hclip it is H-CLIP) or 'infoclip'."""
    seed: int = 0
    """Seeds model initialisation; offset per rank and data-loader worker for everything random after it."""
    deterministic: bool = False
    """Deterministic kernels (slower on GPU; runs are then bit-reproducible on the same hardware)."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    infoclip: InfoClipConfig = field(default_factory=InfoClipConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.method not in METHODS:
            close = difflib.get_close_matches(self.method, METHODS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"method: unknown method '{self.method}'{hint}; known: {', '.join(METHODS)} "
                             "(H-CLIP is method catseg with finetune.mode hclip)")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UsageError(f"name: '{self.name}' must be a plain folder name (it names runs/<name>/)")


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    return from_dict(Recipe, data, where)


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `key=value` overrides, validate every section (UsageError on any problem)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recipe {path} not found; pass a YAML file such as recipes/quickstart.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"recipe {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} must be a mapping of sections (name:, clip:, train:, ...)")
    return recipe_from_dict(apply_overrides(data, list(overrides or [])))


def recipe_to_yaml(recipe: Recipe, header: str = "") -> str:
    import yaml

    body = yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=None)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join([*lines, body]) if lines else body


def save_recipe(recipe: Recipe, path: Path | str, header: str = "") -> None:
    """Write the resolved recipe as YAML (an optional header becomes leading comment lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_to_yaml(recipe, header), encoding="utf-8")
