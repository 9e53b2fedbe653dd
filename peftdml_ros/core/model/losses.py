"""The PEFT-DML training loss.

    total = weight_det * L_det + weight_metric * L_metric
          + weight_cross_modal * L_cross + weight_temporal * L_temporal   (= "consistency")
          + weight_gmm * L_gmm                                            (when the GMM is on)

L_det (per object slot, averaged over real objects):
  - heatmap: CenterNet's Gaussian focal loss (alpha 2, beta 4), normalized by the peak count;
  - box_iou: 1 - GIoU of the predicted and true 3D boxes *aligned to the true box's heading*
    (the center difference is rotated into the true box's frame and both boxes are treated as
    axis-aligned there). Yaw error is left to the L1 on (sin, cos); a perfect box gives 0;
  - l1: |.| summed over sub-cell offset, z, log size, (sin, cos) yaw and velocity;
  - attribute: cross-entropy where the object has an attribute.
L_metric: batch-hard triplet loss on per-object embeddings: the L2-normalized per-modality
  embeddings (LiDAR, radar, camera, present ones only) at the objects' centers; for each anchor
  max(0, d(a, hardest positive) - d(a, hardest negative) + margin), positive = same class (other
  object or other modality), negative = other class; Euclidean d.
L_cross: reliability-weighted mean of ||z_m - sg(z_lidar)||^2 at object centers for m in
  (radar, camera), where LiDAR and m are present; reliability = the (detached) predicted
  heatmap of the object's class at its center (distill only where the detector is confident).
L_temporal: mean ||e_t - e_t+1||^2 of the same object (equal instance ids) in two frames, e the
  normalized mean of the present modalities' embeddings at the object's center.
L_gmm: mean -log p_normal(pooled fused features) under the fitted clean-data GMM.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.detector_net import Embeddings
from peftdml_ros.core.model.gmm import FeatureGmm
from peftdml_ros.core.model.targets import BevTargets

_PROB_EPS = 1e-4
_MAX_LOG_SIZE = 5.0  # exp(5) = 148 m: keeps early predictions from overflowing


def gather_at(maps: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """maps [B, C, H, W], flattened cell indices [B, M] -> values [B, M, C]."""
    b, c = maps.shape[0], maps.shape[1]
    flat = maps.reshape(b, c, -1)
    return flat.gather(2, indices.unsqueeze(1).expand(-1, c, -1)).transpose(1, 2)


def focal_heatmap_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """Gaussian focal loss of probabilities pred vs. Gaussian targets, both [B, K, H, W]."""
    p = pred.clamp(_PROB_EPS, 1.0 - _PROB_EPS)
    positive = target >= 1.0 - 1e-6
    pos = torch.log(p) * (1.0 - p) ** alpha
    neg = torch.log(1.0 - p) * p**alpha * (1.0 - target) ** beta
    loss = torch.where(positive, pos, neg).sum()
    return -loss / positive.sum().clamp(min=1).to(pred.dtype)


def aligned_giou_3d(
    center_delta_m: torch.Tensor,
    pred_size_wlh_m: torch.Tensor,
    true_size_wlh_m: torch.Tensor,
    true_sin_cos: torch.Tensor,
) -> torch.Tensor:
    """GIoU [...] of a predicted box offset by center_delta (x, y, z; m) from the true box, both
    in the true box's heading frame (see module doc). Sizes are (w, l, h)."""
    sin, cos = true_sin_cos[..., 0], true_sin_cos[..., 1]
    dx, dy, dz = center_delta_m.unbind(-1)
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    pred_center = torch.stack([across, along, dz], dim=-1)  # axes of (w, l, h)
    lo_p, hi_p = pred_center - pred_size_wlh_m / 2, pred_center + pred_size_wlh_m / 2
    lo_t, hi_t = -true_size_wlh_m / 2, true_size_wlh_m / 2
    inter = (torch.minimum(hi_p, hi_t) - torch.maximum(lo_p, lo_t)).clamp(min=0).prod(-1)
    union = pred_size_wlh_m.prod(-1) + true_size_wlh_m.prod(-1) - inter
    enclose = (torch.maximum(hi_p, hi_t) - torch.minimum(lo_p, lo_t)).prod(-1)
    iou = inter / union.clamp(min=1e-9)
    return iou - (enclose - union) / enclose.clamp(min=1e-9)


def detection_losses(
    outputs: Mapping[str, torch.Tensor], targets: BevTargets, config: ModelConfig
) -> dict[str, torch.Tensor]:
    """heatmap, box_iou, l1, attribute and their weighted sum det."""
    heatmap = focal_heatmap_loss(
        outputs["heatmap"], targets.heatmap, config.focal_alpha, config.focal_beta
    )
    mask = targets.mask
    count = mask.sum().clamp(min=1.0)
    pred = {
        n: gather_at(outputs[n], targets.indices)
        for n in ("center_offset", "center_z", "log_size", "yaw_sin_cos", "velocity")
    }
    log_size = pred["log_size"].clamp(-_MAX_LOG_SIZE, _MAX_LOG_SIZE)
    delta_xy = (pred["center_offset"] - targets.offset) * config.cell_m
    delta = torch.cat([delta_xy, pred["center_z"] - targets.z], dim=-1)
    giou = aligned_giou_3d(
        delta, torch.exp(log_size), torch.exp(targets.log_size), targets.yaw_sin_cos
    )
    box_iou = ((1.0 - giou) * mask).sum() / count
    l1_terms = (
        (pred["center_offset"] - targets.offset).abs().sum(-1)
        + (pred["center_z"] - targets.z).abs().sum(-1)
        + (pred["log_size"] - targets.log_size).abs().sum(-1)
        + (pred["yaw_sin_cos"] - targets.yaw_sin_cos).abs().sum(-1)
        + (pred["velocity"] - targets.velocity).abs().sum(-1) * targets.velocity_valid
    )
    l1 = (l1_terms * mask).sum() / count
    attribute = _attribute_loss(outputs["attribute_logits"], targets)
    det = (
        config.weight_heatmap * heatmap
        + config.weight_box_iou * box_iou
        + config.weight_l1 * l1
        + config.weight_attribute * attribute
    )
    return {"heatmap": heatmap, "box_iou": box_iou, "l1": l1, "attribute": attribute, "det": det}


def _attribute_loss(logits_map: torch.Tensor, targets: BevTargets) -> torch.Tensor:
    logits = gather_at(logits_map, targets.indices)  # [B, M, A]
    has = (targets.attribute >= 0) & (targets.mask > 0.5)
    per_object = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.attribute.clamp(min=0).reshape(-1),
        reduction="none",
    ).reshape(has.shape)
    return (per_object * has).sum() / has.sum().clamp(min=1).to(logits.dtype)


def _fusion_indices(targets: BevTargets, config: ModelConfig) -> torch.Tensor:
    """Output-grid cell indices [B, M] -> the fusion-grid cells that hold them."""
    width = config.grid_hw[1]
    row, col = targets.indices // width, targets.indices % width
    return (row // 2) * config.fusion_hw[1] + col // 2


def object_embeddings(
    embeddings: Embeddings, targets: BevTargets, config: ModelConfig
) -> torch.Tensor:
    """Per-modality embeddings [B, 3, M, d] at the objects' centers (0 for masked modalities)."""
    b, s, d = embeddings.spatial.shape[:3]
    flat = embeddings.spatial.reshape(b * s, d, -1)
    idx = _fusion_indices(targets, config).repeat_interleave(s, dim=0)  # [B * 3, M]
    values = flat.gather(2, idx.unsqueeze(1).expand(-1, d, -1))  # [B * 3, d, M]
    return values.reshape(b, s, d, -1).transpose(2, 3)


def triplet_metric_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float
) -> torch.Tensor:
    """Batch-hard triplet loss of embeddings [N, d] with class labels [N] (0 if none valid)."""
    sq = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(-1)
    dist = torch.sqrt(sq + 1e-12)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    not_self = ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    positive, negative = same & not_self, ~same
    hardest_pos = torch.where(positive, dist, torch.full_like(dist, -1.0)).amax(dim=1)
    hardest_neg = torch.where(negative, dist, torch.full_like(dist, 1e9)).amin(dim=1)
    usable = positive.any(dim=1) & negative.any(dim=1)
    per_anchor = F.relu(hardest_pos - hardest_neg + margin)
    return (per_anchor * usable).sum() / usable.sum().clamp(min=1).to(embeddings.dtype)


def metric_loss(embeddings: Embeddings, targets: BevTargets, config: ModelConfig) -> torch.Tensor:
    per_object = object_embeddings(embeddings, targets, config)  # [B, 3, M, d]
    b, s, m, d = per_object.shape
    present = embeddings.mask[:, :s].unsqueeze(2) * targets.mask.unsqueeze(1)  # [B, 3, M]
    labels = targets.labels.unsqueeze(1).expand(b, s, m)
    keep = present.reshape(-1) > 0.5
    chosen = per_object.reshape(-1, d)[keep][: config.max_metric_samples]
    chosen_labels = labels.reshape(-1)[keep][: config.max_metric_samples]
    if chosen.shape[0] < 2:
        return per_object.sum() * 0.0
    return triplet_metric_loss(chosen, chosen_labels, config.triplet_margin)


def cross_modal_loss(
    outputs: Mapping[str, torch.Tensor],
    embeddings: Embeddings,
    targets: BevTargets,
    config: ModelConfig,
) -> torch.Tensor:
    per_object = object_embeddings(embeddings, targets, config)  # [B, 3, M, d]
    teacher = per_object[:, 0].detach()  # LiDAR [B, M, d]
    heat = gather_at(outputs["heatmap"], targets.indices).detach()  # [B, M, K]
    reliability = heat.gather(2, targets.labels.unsqueeze(-1)).squeeze(-1) * targets.mask
    reliability = reliability * embeddings.mask[:, 0:1]
    total = per_object.sum() * 0.0
    weight_sum = per_object.new_zeros(())
    for student in (1, 2):
        weight = reliability * embeddings.mask[:, student : student + 1]
        dist = (per_object[:, student] - teacher).pow(2).sum(-1)
        total = total + (weight * dist).sum()
        weight_sum = weight_sum + weight.sum()
    return total / weight_sum.clamp(min=1e-6)


def _object_summary(
    embeddings: Embeddings, targets: BevTargets, config: ModelConfig
) -> torch.Tensor:
    per_object = object_embeddings(embeddings, targets, config)  # [B, 3, M, d]
    weights = embeddings.mask[:, :3].reshape(-1, 3, 1, 1)
    mean = (per_object * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.normalize(mean, dim=-1, eps=1e-6)  # [B, M, d]


def temporal_loss(
    embeddings: Embeddings,
    targets: BevTargets,
    next_embeddings: Embeddings,
    next_targets: BevTargets,
    config: ModelConfig,
) -> torch.Tensor:
    now = _object_summary(embeddings, targets, config)
    later = _object_summary(next_embeddings, next_targets, config)
    ids_now, ids_later = targets.instance, next_targets.instance
    match = (
        (ids_now.unsqueeze(2) == ids_later.unsqueeze(1))
        & (ids_now.unsqueeze(2) >= 0)
        & (targets.mask.unsqueeze(2) > 0.5)
        & (next_targets.mask.unsqueeze(1) > 0.5)
    ).to(now.dtype)  # [B, M, M]
    sq = (
        now.pow(2).sum(-1).unsqueeze(2)
        + later.pow(2).sum(-1).unsqueeze(1)
        - 2.0 * now @ later.transpose(1, 2)
    ).clamp(min=0)
    return (match * sq).sum() / match.sum().clamp(min=1.0)


def compute_losses(
    outputs: Mapping[str, torch.Tensor],
    embeddings: Embeddings,
    targets: BevTargets,
    config: ModelConfig,
    gmm: FeatureGmm | None = None,
    next_frame: tuple[Embeddings, BevTargets] | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term and the weighted `total` (see module doc).

    next_frame: the embeddings and targets (with instance ids) of the following frame of the same
    sequences, for the temporal term; without it the temporal term is 0.
    """
    terms = detection_losses(outputs, targets, config)
    terms["metric"] = metric_loss(embeddings, targets, config)
    terms["cross_modal"] = cross_modal_loss(outputs, embeddings, targets, config)
    zero = terms["det"] * 0.0
    terms["temporal"] = (
        temporal_loss(embeddings, targets, next_frame[0], next_frame[1], config)
        if next_frame is not None
        else zero
    )
    use_gmm = config.gmm_enabled and gmm is not None and gmm.is_fitted
    terms["gmm"] = gmm.nll(embeddings.pooled).mean() if use_gmm and gmm is not None else zero
    terms["consistency"] = (
        config.weight_cross_modal * terms["cross_modal"]
        + config.weight_temporal * terms["temporal"]
    )
    terms["total"] = (
        config.weight_det * terms["det"]
        + config.weight_metric * terms["metric"]
        + terms["consistency"]
        + config.weight_gmm * terms["gmm"]
    )
    return terms
