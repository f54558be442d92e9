"""Recipes: one YAML file per experiment, validated strictly before any heavy work.

A recipe composes sections owned by the rooms that use them. Every recipe has

    name, method, seed, deterministic
    clip:      ovss_cli.clip.config.ClipConfig
    data:      ovss_cli.data.config.DataConfig
    optim:     ovss_cli.engine.config.OptimConfig
    train:     ovss_cli.engine.config.TrainConfig

and exactly the further sections its method reads (`ovss_cli.methods.registry.METHODS`):

    finetune:  ovss_cli.peft.config.FinetuneConfig
    decoder:   ovss_cli.decoder.config.DecoderConfig
    loss:      ovss_cli.losses.config.LossConfig
    infoclip:  ovss_cli.methods.infoclip_config.InfoClipConfig
    clip_es:   ovss_cli.wsss.config.ClipEsConfig      (pseudo-labels: `ovss pseudolabel`)
    prototypes: ovss_cli.wsss.config.VplConfig        (VPL vision prototypes: `ovss prototypes`)
    vpl:       ovss_cli.methods.vpl_config.VplTrainConfig  (the decoder on frozen CLIP: `ovss train`)

`method: catseg` is the CAT-Seg model; H-CLIP is the same model with `finetune.mode: hclip`;
`method: infoclip` adds InfoCLIP's distillation from the frozen pretrained CLIP; `method: vpl` is the
weakly-supervised pipeline (pseudo-labels, vision prototypes, a decoder on frozen CLIP).
Dotted `key=value` overrides apply to the YAML before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from ovss_cli.clip.config import ClipConfig
from ovss_cli.config import apply_overrides, from_dict, to_dict
from ovss_cli.data.config import DataConfig
from ovss_cli.decoder.config import DecoderConfig
from ovss_cli.engine.config import OptimConfig, TrainConfig
from ovss_cli.errors import UsageError
from ovss_cli.fileio import write_text
from ovss_cli.losses.config import LossConfig
from ovss_cli.methods.infoclip_config import InfoClipConfig
from ovss_cli.methods.registry import METHODS
from ovss_cli.methods.vpl_config import VplTrainConfig
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.textutil import did_you_mean
from ovss_cli.wsss.config import ClipEsConfig, VplConfig

# The choices of `method`, derived from the registry so they never drift apart.
MethodName = Literal[tuple(METHODS)]


@dataclass
class Recipe:
    name: str = "catseg"
    """Run name: runs go to runs/<name>/<timestamp>/."""
    method: MethodName = "catseg"
    """Model family: 'catseg' (CAT-Seg; with finetune.mode hclip it is H-CLIP), 'infoclip' or 'vpl' (WSSS)."""
    seed: int = 0
    """Seeds model initialisation; offset per rank and data-loader worker for everything random after it."""
    deterministic: bool = False
    """Deterministic kernels (slower on GPU; runs are then bit-reproducible on the same hardware)."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Method sections: present exactly when the method reads them (None otherwise).
    finetune: Optional[FinetuneConfig] = None
    decoder: Optional[DecoderConfig] = None
    loss: Optional[LossConfig] = None
    infoclip: Optional[InfoClipConfig] = None
    clip_es: Optional[ClipEsConfig] = None
    prototypes: Optional[VplConfig] = None
    vpl: Optional[VplTrainConfig] = None

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UsageError(f"name: '{self.name}' must be a plain folder name (it names runs/<name>/)")
        for section in METHOD_SECTIONS:
            present = getattr(self, section) is not None
            if present != (section in METHODS[self.method].sections):
                state = "needs" if not present else "does not use"
                raise UsageError(f"method {self.method} {state} the '{section}:' section")

    def to_dict(self) -> dict:
        """Plain nested dict of the recipe, without the sections its method does not read."""
        return {key: value for key, value in to_dict(self).items()
                if not (key in METHOD_SECTIONS and value is None)}


# Sections that only some methods read.
METHOD_SECTIONS = tuple(sorted({section for spec in METHODS.values() for section in spec.sections}))
assert set(METHOD_SECTIONS) <= {f.name for f in dataclasses.fields(Recipe)}, "a method reads an unknown section"


def recipe_from_dict(data: dict, where: str = "recipe", drop_unused_sections: bool = False) -> Recipe:
    """Validate a recipe mapping. Sections the method reads default to their defaults when absent; a section
    it does not read is an error (drop_unused_sections=True ignores them: recipes ovss wrote itself)."""
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a mapping of sections (name:, clip:, train:, ...)")
    method = data.get("method", Recipe.method)
    if method not in METHODS:
        raise UsageError(f"method: unknown method '{method}'{did_you_mean(method, METHODS)}; known: "
                         f"{', '.join(METHODS)} (H-CLIP is method catseg with finetune.mode hclip)")
    wanted = METHODS[method].sections
    unused = [section for section in METHOD_SECTIONS if section in data and section not in wanted]
    if unused and not drop_unused_sections:
        raise UsageError(f"section '{unused[0]}:' is not read by method {method}; remove it "
                         f"(method {method} reads {', '.join(wanted) or 'no method sections'})")
    data = {key: value for key, value in data.items() if key not in unused}
    data.update({section: {} for section in wanted if data.get(section) is None})
    return from_dict(Recipe, data, where)


def shipped_recipes_dir() -> Path:
    """The recipes that ship with ovss: ovss_cli/recipes_data/ in an installed wheel, the top-level recipes/
    folder in a source checkout or editable install (setup.py maps one onto the other)."""
    package = Path(__file__).resolve().parent
    installed = package / "recipes_data"
    return installed if installed.is_dir() else package.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of every shipped recipe, sorted by name."""
    folder = shipped_recipes_dir()
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def recipe_purpose(path: Path) -> str:
    """A recipe's one-line purpose: its first header comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_recipe(path: Path | str) -> Path:
    """A recipe file: `path` itself when it exists, else the shipped recipe of that name
    ('hclip', 'hclip.yaml' or 'recipes/hclip.yaml', so the README's commands work from any folder)."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if path.parent in (Path("."), Path("recipes")) and path.suffix in ("", ".yaml") and path.stem in shipped:
        return shipped[path.stem]
    raise UsageError(f"recipe {path} not found{did_you_mean(path.stem, shipped)}; pass a YAML file or the name of "
                     "a shipped recipe (`ovss recipes` lists them)")


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (a file, or a shipped recipe by name), apply `key=value` overrides, validate every
    section (UsageError on any problem)."""
    path = find_recipe(path)
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
    body = yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join([*lines, body]) if lines else body


def save_recipe(recipe: Recipe, path: Path | str, header: str = "") -> None:
    """Write the resolved recipe as YAML (an optional header becomes leading comment lines)."""
    write_text(Path(path), recipe_to_yaml(recipe, header))
