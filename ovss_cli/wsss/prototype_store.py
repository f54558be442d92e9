"""VPL prototypes on disk: safetensors weights plus a JSON sidecar saying what made them.

`prototypes.safetensors` holds `prototypes` (unit vision prototypes [K, C]) and
`text_prototypes` (the unit text embeddings they started from); `prototypes.json` holds the
CLIP model and weights identity, the class names in order and the hyper-parameters, so that
`ovss pseudolabel --method vpl` can refuse prototypes made for another CLIP or class list.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ovss_cli.errors import OvssError, UsageError
from ovss_cli.fileio import atomic_write, write_json
from ovss_cli.textutil import first_line

FORMAT = "ovss-vpl-prototypes"


def clip_identity(clip) -> str:
    """Which CLIP a `clip:` section builds: '<model>|<tag>', '<model>|<file name>:<size>' for a local file,
    '<model>|random' without weights; then the activation rule (the same weights under another activation
    are another network)."""
    pretrained = clip.pretrained
    if not pretrained:
        weights = "random"
    elif Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
        weights = f"{path.name}:{path.stat().st_size}"
    else:
        weights = pretrained
    return f"{clip.name}|{weights}|quick_gelu={str(clip.quick_gelu).lower()}"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_prototypes(path: Path, prototypes: torch.Tensor, text_prototypes: torch.Tensor, metadata: dict) -> None:
    """Write weights and sidecar, each through a temporary file and a rename."""

    tensors = {"prototypes": prototypes.float().cpu().contiguous(),
               "text_prototypes": text_prototypes.float().cpu().contiguous()}
    atomic_write(path, lambda temporary: save_file(tensors, str(temporary)))
    write_json(sidecar_path(path), {"format": FORMAT, **metadata})


def load_prototypes(path: Path, clip_identity_expected: str, class_names: tuple[str, ...]) -> tuple[torch.Tensor, dict]:
    """Unit prototypes [K, C] and their sidecar, checked against the CLIP identity and class names in use."""

    sidecar = sidecar_path(path)
    if not path.is_file() or not sidecar.is_file():
        raise UsageError(f"prototypes {path} (with its sidecar {sidecar.name}) not found; make them with "
                         "`ovss prototypes --out FILE`")
    try:
        metadata = json.loads(sidecar.read_text())
        prototypes = load_file(str(path))["prototypes"]
    except Exception as err:
        raise OvssError(f"cannot read prototypes {path}: {first_line(err)}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise UsageError(f"{sidecar} is not an ovss VPL prototype sidecar")
    if metadata.get("clip_identity") != clip_identity_expected:
        raise UsageError(f"prototypes {path} were learnt with CLIP '{metadata.get('clip_identity')}', not "
                         f"'{clip_identity_expected}'; pass the same --clip-model/--pretrained or re-run ovss prototypes")
    if tuple(metadata.get("class_names", ())) != tuple(class_names):
        raise UsageError(f"prototypes {path} are for classes {metadata.get('dataset')} "
                         f"({len(metadata.get('class_names', []))} names), not this dataset's {len(class_names)}; "
                         "use prototypes learnt on the same dataset")
    if prototypes.ndim != 2 or prototypes.shape[0] != len(class_names):
        raise OvssError(f"prototypes {path} have shape {tuple(prototypes.shape)}; expected [{len(class_names)}, C]")
    return prototypes, metadata
