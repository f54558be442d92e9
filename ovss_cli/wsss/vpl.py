"""VPL vision prototypes: one prototype per class in CLIP's image-embedding space, guided by the text prototypes.

VPL's code and method section are not public; this is ovss's reconstruction from the paper's
abstract, figures and theorem names, every choice an option:
- features x: region embeddings, i.e. patch embeddings (after ln_post and proj) pooled under a
  present class's CLIP-ES CAM, collected over the training images, with their class y;
- p_T(k|x) = softmax_k(cos(x, t_k) / tau_T), p_I(k|x) = softmax_k(<x_hat, v_k> / tau_I);
- minimise over V: E_x[CE(y, p_I)] + lambda KL(p_T || p_I), V initialised to T.
Both terms are a log-sum-exp of functions linear in V minus linear terms, hence convex while V
is not normalised; the prototypes are normalised after the optimisation. With V = T and
tau_I = tau_T, p_I = p_T (the paper's Proposition 1).

Gauge. The objective sees V only through the logits <x_hat_r, v_k>, up to one shift per region:
V -> V + 1 u^T (the same vector added to every prototype) and any change of V along directions
orthogonal to every region embedding leave it unchanged, so its minimiser is a whole family and
Adam drifts along it. ovss keeps the member closest to the text prototypes,
V = T + (I - 11^T/K) (V - T) P with P the projector onto the span of the region embeddings:
Adam runs on the coordinates of (V - T) in that span, class-centred, so the prototypes' class mean
stays the text mean, the unseen directions stay the text's, and the normalised prototypes (and the
pseudo-labels) depend on the data only, not on the start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovss_cli.wsss.config import VplConfig


def region_embeddings(patch_embeddings: torch.Tensor, cams: torch.Tensor,
                      threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CAM-weighted means [k, C] of patch embeddings [N, C] under cams [k, N], and which rows had any weight."""
    weights = cams * (cams > threshold)
    mass = weights.sum(dim=1)
    keep = mass > 0
    return (weights @ patch_embeddings) / mass.clamp_min(1e-12)[:, None], keep


def text_probabilities(features: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """p_T [R, K] = softmax_k(cos(x, t_k) / tau)."""
    return torch.softmax(F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T / tau, dim=-1)


def image_log_probabilities(features: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """log p_I [R, K] = log_softmax_k(<x_hat, v_k> / tau); the prototypes are used as given (not normalised)."""
    return torch.log_softmax(F.normalize(features, dim=-1) @ prototypes.T / tau, dim=-1)


def prototype_objective(prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                        text_probs: torch.Tensor, tau_image: float, kl_weight: float) -> torch.Tensor:
    """E[CE(y, p_I)] + lambda KL(p_T || p_I), averaged over the R regions."""
    log_p = image_log_probabilities(features, prototypes, tau_image)
    cross_entropy = F.nll_loss(log_p, labels)
    kl = (torch.special.xlogy(text_probs, text_probs) - text_probs * log_p).sum(dim=-1).mean()
    return cross_entropy + kl_weight * kl


def feature_span(features: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis [r, C] of the span of the normalised region embeddings [R, C]."""
    _, singular, basis = torch.linalg.svd(F.normalize(features.double(), dim=-1), full_matrices=False)
    return basis[singular > rtol * singular.max()].to(features.dtype)


def fix_gauge(prototypes: torch.Tensor, text: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The member of V's invariance family closest to T: T + (I - 11^T/K)(V - T)P (P = span^T span)."""
    delta = (prototypes - text) @ span.T @ span
    return text + delta - delta.mean(dim=0, keepdim=True)


def learn_prototypes(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, config: VplConfig,
                     initial: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Unit vision prototypes [K, C] from region embeddings [R, C] with classes `labels` [R] (0..K-1).

    Full-batch Adam from V = T (unit text embeddings; `initial` [K, C] starts elsewhere), the gauge fixed after
    every step; returns the prototypes and the initial and final loss.
    """
    config.validate()
    features = features.float()
    text = F.normalize(text.float(), dim=-1).to(features.device)
    text_probs = text_probabilities(features, text, config.tau_text)
    span = feature_span(features)
    start = text if initial is None else fix_gauge(initial.float().to(features.device), text, span)
    # Adam runs on the coordinates the objective sees: V = T + centre(D) B, D [K, r], B the span basis.
    coordinates = ((start - text) @ span.T).requires_grad_(True)
    optimizer = torch.optim.Adam([coordinates], lr=config.lr)

    def current() -> torch.Tensor:
        return text + (coordinates - coordinates.mean(dim=0, keepdim=True)) @ span

    def objective() -> torch.Tensor:
        return prototype_objective(current(), features, labels, text_probs, config.tau_image, config.kl_weight)

    with torch.no_grad():
        initial_loss = float(objective())
    with torch.enable_grad():
        for _ in range(config.steps):
            optimizer.zero_grad()
            objective().backward()
            optimizer.step()
    with torch.no_grad():
        final = float(objective())
    return F.normalize(current().detach(), dim=-1), {"initial_loss": initial_loss, "final_loss": final,
                                                      "regions": int(features.shape[0])}
