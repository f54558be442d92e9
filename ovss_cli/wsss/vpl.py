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


def learn_prototypes(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                     config: VplConfig) -> tuple[torch.Tensor, dict]:
    """Unit vision prototypes [K, C] from region embeddings [R, C] with classes `labels` [R] (0..K-1).

    Full-batch Adam from V = T (unit text embeddings); returns the prototypes and the initial and final loss.
    """
    config.validate()
    features = features.float()
    text = F.normalize(text.float(), dim=-1).to(features.device)
    text_probs = text_probabilities(features, text, config.tau_text)
    prototypes = text.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([prototypes], lr=config.lr)

    def objective() -> torch.Tensor:
        return prototype_objective(prototypes, features, labels, text_probs, config.tau_image, config.kl_weight)

    with torch.no_grad():
        initial = float(objective())
    with torch.enable_grad():
        for _ in range(config.steps):
            optimizer.zero_grad()
            objective().backward()
            optimizer.step()
    with torch.no_grad():
        final = float(objective())
    return F.normalize(prototypes.detach(), dim=-1), {"initial_loss": initial, "final_loss": final,
                                                      "regions": int(features.shape[0])}
