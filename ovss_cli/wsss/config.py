"""Recipe sections of the weakly-supervised pipeline: `clip_es:` (pseudo-labels, with its `crf:`) and
`prototypes:` (VPL vision prototypes). No torch here: recipes validate at start-up.

`ovss pseudolabel` and `ovss prototypes` read these sections from a recipe (or their defaults);
their command-line flags override single keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from ovss_cli.errors import UsageError

BILATERAL_METHODS = ("lattice", "grouped")


@dataclass(frozen=True)
class CrfParams:
    """Dense CRF of CLIP-ES (pydensecrf's parameters), run as a torch mean-field."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_weight: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_weight: float = 4.0
    bilateral_cell: Optional[int] = None  # source groups' spatial block in px; None: bilateral_sxy / 16 (1 = exact)
    colour_bin: Optional[float] = None  # source groups' colour bin per channel; None: bilateral_srgb / 2
    max_pairs: float = 4e9  # most pixel x source-group pairs of one bilateral pass (groups coarsen to fit)
    cache_pairs: float = 1.5e8  # keep the bilateral kernel in memory when it has at most this many entries
    unary_clip: float = 1e-5  # pydensecrf's unary_from_softmax clip
    bilateral_method: str = "lattice"  # "lattice" (4 x 4 blocks, permutohedral, fast) or "grouped" (reference)
    bilateral_downsample: int = 4  # lattice: block size of the grid the bilateral message is computed on (1 = full)

    def __post_init__(self):
        if self.bilateral_method not in BILATERAL_METHODS:
            raise UsageError(f"crf bilateral_method must be one of {', '.join(BILATERAL_METHODS)}, "
                             f"got {self.bilateral_method!r}")
        if self.bilateral_downsample < 1:
            raise UsageError(f"crf bilateral_downsample must be at least 1, got {self.bilateral_downsample}")


# CLIP-ES's CAM threshold for the affinity box masks: 0.4 of the maximum on VOC, 0.7 on COCO.
DEFAULT_BOX_THRESHOLD = {"voc": 0.4, "coco": 0.7, "toy": 0.4}


@dataclass
class ClipEsConfig:
    """CLIP-ES pseudo-labels: softmax-GradCAM, attention-affinity refinement, optional dense CRF."""

    logit_scale: float = 100.0
    """CLIP's learned scale (100 for OpenAI weights), fixed so any checkpoint scores alike."""
    box_threshold: float = 0.4
    """CAM fraction of the max whose contour boxes gate the affinity (CLIP-ES: 0.4 on VOC, 0.7 on COCO)."""
    affinity_layers: int = 8
    """Last layers whose attention makes the affinity."""
    sinkhorn_rounds: int = 3
    background_power: float = 1.0
    """alpha in the background score (1 - max_k cam_k)^alpha."""
    scales: tuple[float, ...] = (1.0,)
    """Image scales whose CAMs are averaged (CLIP-ES: single scale)."""
    pos_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    """How positional embeddings follow the image size (CLIP-ES: bilinear)."""
    crf: Optional[CrfParams] = field(default_factory=CrfParams)
    """Dense CRF settings; null: labels are the plain argmax."""
    confidence: float = 0.95
    """CRF marginals below this become 255 (ignore): CLIP-ES's confidence-guided loss."""

    def validate(self) -> None:
        if not 0 < self.box_threshold < 1:
            raise UsageError(f"box threshold must lie in (0, 1), got {self.box_threshold}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise UsageError(f"scales must be positive numbers, got {self.scales}")
        if self.background_power <= 0:
            raise UsageError(f"background power must be positive, got {self.background_power}")
        if not 0 <= self.confidence <= 1:
            raise UsageError(f"confidence must lie in [0, 1], got {self.confidence}")
        if self.affinity_layers < 1 or self.sinkhorn_rounds < 1:
            raise UsageError("affinity layers and Sinkhorn rounds must be at least 1")

    def as_dict(self) -> dict:
        return asdict(self)


REGION_CAMS = ("refined", "gradcam")


@dataclass
class VplConfig:
    """VPL vision prototypes (a reconstruction, docs/wsss.md): E[CE(y, p_I)] + lambda KL(p_T || p_I) over V."""

    tau_text: float = 0.01
    """Temperature of the text-prototype probabilities p_T."""
    tau_image: float = 0.01
    """Temperature of the vision-prototype probabilities p_I."""
    kl_weight: float = 1.0
    """lambda, the weight of KL(p_T || p_I)."""
    lr: float = 1e-2
    """Full-batch Adam step size."""
    steps: int = 300
    region_cam: Literal["refined", "gradcam"] = "refined"
    """CAM that pools region embeddings: refined (CLIP-ES with CAA) or gradcam."""
    region_threshold: float = 0.0
    """CAM values at or below this do not pool (0: CAM-weighted mean)."""

    def validate(self) -> None:
        if self.tau_text <= 0 or self.tau_image <= 0:
            raise UsageError("VPL temperatures must be positive")
        if self.kl_weight < 0 or self.lr <= 0 or self.steps < 0:
            raise UsageError("VPL needs kl_weight >= 0, lr > 0 and steps >= 0")
        if self.region_cam not in REGION_CAMS:
            raise UsageError(f"region CAM must be one of {', '.join(REGION_CAMS)}, got '{self.region_cam}'")
        if not 0 <= self.region_threshold < 1:
            raise UsageError(f"region threshold must lie in [0, 1), got {self.region_threshold}")

    def as_dict(self) -> dict:
        return asdict(self)
