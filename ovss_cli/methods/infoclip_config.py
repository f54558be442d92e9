"""The `infoclip:` recipe section (no torch: recipes validate at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ovss_cli.errors import UsageError


@dataclass
class InfoClipConfig:
    """InfoCLIP: alignment transfer from the frozen pretrained CLIP, L = L_task + λ1 L_c + λ2 L_d."""

    lambda_compression: float = 1.0
    """λ1, weight of the compression (information-bottleneck) loss L_c on the teacher's alignment."""
    lambda_distill: float = 1.0
    """λ2, weight of the distillation loss L_d = −I(R^T; R^S); 0.5 (InfoSAM's value) if training is unstable."""
    alpha: float = 2.0
    """Order of the matrix-based Rényi entropy; 2 has a closed form, any other order needs eigenvalues (slower)."""
    gram_axis: Literal["batch", "patch", "class"] = "batch"
    """batch: B×B Grams over the GLOBAL batch (needs >= 2 images per micro-step); patch: per image HW×HW;
    class: per image N_C×N_C."""
    teacher_detach: bool = False
    """true: R^T enters L_d detached, so L_d trains only the student side of LPAM and the student CLIP."""
    eps: float = 1e-8
    """Guard inside every log2 and every L2 / trace normalisation."""

    def validate(self) -> None:
        if self.lambda_compression < 0 or self.lambda_distill < 0:
            raise UsageError("infoclip.lambda_compression and infoclip.lambda_distill must be >= 0")
        if self.lambda_compression == 0 and self.lambda_distill == 0:
            # LPAM would get no gradient (DDP refuses that) and the model would be plain CAT-Seg
            raise UsageError("infoclip.lambda_compression and infoclip.lambda_distill are both 0: that is plain "
                             "CAT-Seg, use method catseg")
        if self.alpha <= 0:
            raise UsageError(f"infoclip.alpha is a Rényi entropy order and must be positive, got {self.alpha}")
        if not 0 < self.eps <= 1e-3:
            raise UsageError(f"infoclip.eps must lie in (0, 1e-3], got {self.eps}")

    def check_global_batch(self, batch_size: int, accumulate_steps: int) -> None:
        """Batch-axis Grams are built per micro-step over batch_size / accumulate_steps images."""
        if self.gram_axis == "batch" and batch_size // max(accumulate_steps, 1) < 2:
            raise UsageError(f"infoclip.gram_axis batch needs at least 2 images per micro-step (data.batch_size "
                             f"{batch_size} / optim.accumulate_steps {accumulate_steps}); raise data.batch_size, "
                             "lower optim.accumulate_steps, or use infoclip.gram_axis=patch")
