"""A diagonal Gaussian mixture of the clean-data feature distribution P_normal.

Fitted (EM in torch) on pooled fused features [N, d] of clean frames; then
  - `nll(x)` = -log p_normal(x) is the run-time `normality_score` output (a "distance from
    normal" per frame, in nats; core.health turns it into a percentile of clean frames);
  - `alignment_loss(x)` is the distribution-alignment training loss built on it (see there why
    it is not the raw -log p);
  - before a fit, `fitted` is 0 and both are 0 (the graph is the same either way).
The parameters are buffers (not trained by SGD) and live in the state dict, so a checkpoint and
`--resume` carry the fitted mixture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from peftdml_ros.core.errors import ConfigError

if TYPE_CHECKING:
    from peftdml_ros.core.model.detector_net import PeftDmlNet

_MIN_VAR = 1e-4


class FeatureGmm(nn.Module):
    """K-component diagonal GMM over d-dim features."""

    means: torch.Tensor
    log_vars: torch.Tensor
    log_weights: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, components: int, dim: int) -> None:
        super().__init__()
        self.components, self.dim = components, dim
        self.register_buffer("means", torch.zeros(components, dim))
        self.register_buffer("log_vars", torch.zeros(components, dim))
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))
        self.register_buffer("fitted", torch.zeros(()))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item() > 0.5)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) [N] of features x [N, d], computed in float32 whatever the dtype of x (the
        log-density of a far-off frame easily exceeds fp16's range)."""
        x = x.to(torch.float32)
        means, log_vars = self.means.to(torch.float32), self.log_vars.to(torch.float32)
        diff = x.unsqueeze(1) - means.unsqueeze(0)  # [N, K, d]
        inv_var = torch.exp(-log_vars)
        log_norm = -0.5 * (log_vars.sum(dim=1) + self.dim * math.log(2.0 * math.pi))
        log_comp = log_norm.unsqueeze(0) - 0.5 * (diff * diff * inv_var.unsqueeze(0)).sum(dim=2)
        log_weights = self.log_weights.to(torch.float32)
        return torch.logsumexp(log_comp + log_weights.unsqueeze(0), dim=1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) [N] (float32), or zeros [N] while the GMM is not fitted."""
        return -self.log_prob(x) * self.fitted.to(torch.float32)

    def nll_lower_bound(self) -> torch.Tensor:
        """The smallest -log p any x can have (a scalar, nats): p(x) = sum_k w_k N_k(x) is at
        most the peak density of the sharpest component, (2 pi)^(-d/2) prod_j sigma_kj^-1."""
        log_vars = self.log_vars.to(torch.float32)
        half_log_det = 0.5 * (log_vars + math.log(2.0 * math.pi)).sum(dim=1)  # [K]
        return half_log_det.min()

    def alignment_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The distribution-alignment loss [N] of features x [N, d]: log(1 + e), where
        e = (-log p(x) - nll_lower_bound()) / d >= 0 is the excess -log p per dimension.
        Zeros while the GMM is not fitted.

        Why not the raw -log p: fitted variances go down to the fit's floor (1e-4, inverse
        variance 1e4), so the raw term's gradient grows linearly with the distance from the
        nearest component, summed over d dimensions: frames with a modality dropped out (far
        from the clean features) would steer every training step (docs/model.md, "Sensor-health
        score", has measured gradient norms). Dividing by d makes the weight independent of the
        embedding width; the lower bound makes the excess >= 0 (the raw -log p of a tight
        mixture is negative); log(1 + e), a Cauchy-type robust loss, bounds the gradient with
        respect to x whatever the distance (by 1 / (sigma_min sqrt(2 d)) for one component)
        while still pulling far-off frames toward normal (a clamp would give them no gradient
        at all, and they are the frames alignment is for).
        """
        excess = (self.nll(x) - self.nll_lower_bound()) / self.dim
        return torch.log1p(excess.clamp(min=0.0)) * self.fitted.to(torch.float32)

    @torch.no_grad()
    def fit(
        self,
        features: torch.Tensor,
        iterations: int = 50,
        generator: torch.Generator | None = None,
        tolerance: float = 1e-5,
    ) -> float:
        """EM on features [N, d] (N >= K); returns the final mean log-likelihood per sample."""
        x = features.detach().to(torch.float32).reshape(-1, self.dim)
        count = x.shape[0]
        if count < self.components:
            raise ConfigError(
                f"the GMM needs at least {self.components} feature vectors to fit, got {count}: "
                "fit it on more clean frames or lower gmm_components"
            )
        init = torch.randperm(count, generator=generator)[: self.components]
        means = x[init].clone()
        var = x.var(dim=0, unbiased=False).clamp(min=_MIN_VAR)
        log_vars = torch.log(var).unsqueeze(0).repeat(self.components, 1)
        log_weights = torch.full((self.components,), -math.log(self.components))
        previous = -math.inf
        mean_ll = previous
        for _ in range(iterations):
            self.means.copy_(means)
            self.log_vars.copy_(log_vars)
            self.log_weights.copy_(log_weights)
            resp, mean_ll = self._e_step(x)
            means, log_vars, log_weights = _m_step(x, resp)
            if abs(mean_ll - previous) < tolerance * max(1.0, abs(mean_ll)):
                break
            previous = mean_ll
        self.means.copy_(means)
        self.log_vars.copy_(log_vars)
        self.log_weights.copy_(log_weights)
        self.fitted.fill_(1.0)
        return float(self.log_prob(x).mean())

    def _e_step(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)
        log_norm = -0.5 * (self.log_vars.sum(dim=1) + self.dim * math.log(2.0 * math.pi))
        inv_var = torch.exp(-self.log_vars).unsqueeze(0)
        log_comp = log_norm - 0.5 * (diff * diff * inv_var).sum(dim=2) + self.log_weights
        log_total = torch.logsumexp(log_comp, dim=1, keepdim=True)
        return torch.exp(log_comp - log_total), float(log_total.mean())


def _m_step(x: torch.Tensor, resp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mass = resp.sum(dim=0) + 1e-8  # [K]
    means = (resp.t() @ x) / mass.unsqueeze(1)
    second = (resp.t() @ (x * x)) / mass.unsqueeze(1)
    var = (second - means * means).clamp(min=_MIN_VAR)
    log_weights = torch.log(mass / mass.sum())
    return means, torch.log(var), log_weights


@torch.no_grad()
def fit_feature_gmm(
    model: PeftDmlNet,
    batches: Iterable[Mapping[str, torch.Tensor]],
    iterations: int = 50,
    generator: torch.Generator | None = None,
) -> float:
    """Fit `model.gmm` on the pooled fused features of clean input batches (model_io inputs).

    Use frames with every sensor healthy: the GMM defines "normal". Returns the mean
    log-likelihood of the fitted features. The model is left in eval mode.
    """
    model.eval()
    pooled = [model.forward_with_embeddings(batch)[1].pooled for batch in batches]
    if not pooled:
        raise ConfigError("fit_feature_gmm got no batches: pass clean frames' inputs")
    return model.gmm.fit(torch.cat(pooled), iterations=iterations, generator=generator)
