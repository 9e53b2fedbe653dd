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

The embedding terms work on the L2-normalized shared embeddings z (per modality, per fusion cell)
and are built so that a collapsed embedding (every z equal) is never a minimum (docs/model.md,
"Why the embedding cannot collapse"):
L_metric = contrast + spread, in the metric space m = normalize(G z) (G: the metric head, a
  linear read-out of the shared space; see fusion.EmbeddingHeads).
  contrast: supervised, multi-positive InfoNCE (SupCon) with temperature metric_temperature.
    Anchors are the metric embeddings of every present spatial modality (LiDAR, radar, camera)
    at the objects' centers; an anchor's positives are the other anchors of its class (the same
    object seen by another modality, or another object); its negatives are the anchors of other
    classes and background cells (metric_background_cells random cells per frame and modality,
    away from every object's target Gaussian; never positives, so background is not forced into
    one cluster). All sit in one softmax: collapse costs log(#candidates).
  spread: relu(s - S) / s with S = mean ||m_i - mean m||^2 (total variance) of the anchors and
    s = metric_min_spread: 0 while the object embeddings spread, 1 if they collapse to a point.
L_cross (cross_modal): stop-gradient distillation toward LiDAR at object centers: radar's and
  camera's predictions of the LiDAR embedding (predictor P_m, a linear map of z_m, normalized)
  against the detached z_lidar, 1 - cos(P_m z_m, sg(z_lidar)), averaged with weights = the
  (detached) predicted heatmap of the object's class at its center, where LiDAR and m are
  present (distill only where the detector is confident). The teacher gets no gradient from
  it, so it cannot be pulled along, and the student keeps its own features.
L_temporal: instance discrimination across t and t+1 (InfoNCE, temporal_temperature), both
  directions. An object's summary (normalized mean of its present modalities' embeddings at its
  center) at t must pick the same instance at t+1 out of every other object of the batch's t+1
  frames and background cells there (the same instance in another frame of the batch is left
  out, not a negative).
L_gmm: mean log(1 + e) of the pooled fused features under the fitted clean-data GMM, with e the
  excess -log p_normal per dimension (FeatureGmm.alignment_loss says why not the raw -log p).
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
_EXCLUDED_LOGIT = -1e4  # softmax weight exp(-1e4) = 0: a candidate that is not compared


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


def _maps_at(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Per-modality maps [B, S, d, H_f, W_f] at fusion-grid cells [B, N] -> [B, S, N, d]."""
    b, s, d = maps.shape[:3]
    flat = maps.reshape(b, s, d, -1)
    idx = cells.reshape(b, 1, 1, -1).expand(b, s, d, cells.shape[1])
    return flat.gather(3, idx).transpose(2, 3)


def _spatial_at(embeddings: Embeddings, cells: torch.Tensor) -> torch.Tensor:
    """Per-modality embeddings [B, 3, N, d] at fusion-grid cells [B, N] (0 for masked ones)."""
    return _maps_at(embeddings.spatial, cells)


def background_cells(targets: BevTargets, count: int) -> torch.Tensor:
    """`count` random fusion-grid cells [B, count] per frame, away from every object.

    A cell is away when no class's target heatmap is above 0 in the output cells it covers.
    Where a frame has fewer free cells, the rest of the draw falls on object cells; callers
    drop those (`_occupied_fusion_cells`).
    """
    occupied = _occupied_fusion_cells(targets)  # [B, Q]
    noise = torch.rand(occupied.shape, device=occupied.device)
    # Free cells get keys in [0, 1), occupied ones in [2, 3): the smallest keys are free first.
    keys = noise + 2.0 * occupied.to(noise.dtype)
    return keys.topk(min(count, keys.shape[1]), dim=1, largest=False).indices


def _occupied_fusion_cells(targets: BevTargets) -> torch.Tensor:
    """[B, H_f * W_f] True where some object's target Gaussian reaches the fusion cell."""
    peak = targets.heatmap.amax(dim=1, keepdim=True)  # [B, 1, H_B, W_B]
    return (F.max_pool2d(peak, kernel_size=2) > 0.0).flatten(1)


def background_embeddings(
    embeddings: Embeddings, targets: BevTargets, config: ModelConfig
) -> torch.Tensor:
    """Metric-space embeddings [Q, d] of present modalities at random background cells."""
    cells = background_cells(targets, config.metric_background_cells)  # [B, n]
    free = ~_occupied_fusion_cells(targets).gather(1, cells)  # [B, n]
    values = _maps_at(embeddings.metric, cells)  # [B, 3, n, d]
    keep = (embeddings.mask[:, :3].unsqueeze(2) > 0.5) & free.unsqueeze(1)  # [B, 3, n]
    return values[keep]


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive: torch.Tensor,
    allowed: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Multi-positive InfoNCE of anchors [N, d] against candidates [C, d] (unit vectors).

    positive, allowed: [N, C] bool; the softmax of anchor i runs over its allowed candidates,
    and its loss is -mean over its positives of log softmax(a_i . c / T). Anchors without a
    positive are skipped; with none at all the loss is 0 (still part of the graph).
    """
    logits = anchors @ candidates.t() / temperature
    logits = torch.where(allowed, logits, torch.full_like(logits, _EXCLUDED_LOGIT))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positive & allowed
    count = pos.sum(dim=1)
    picked = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -picked / count.clamp(min=1).to(logits.dtype)
    has = (count > 0).to(logits.dtype)
    return (per_anchor * has).sum() / has.sum().clamp(min=1.0)


def supervised_contrastive_loss(
    anchors: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """SupCon of unit vectors anchors [N, d] with class labels [N] and extra unlabeled
    negatives [Q, d]: positives of an anchor are the other anchors of its class; the softmax
    runs over every other anchor and every negative."""
    n = anchors.shape[0]
    extra = anchors.new_zeros((0, anchors.shape[1])) if negatives is None else negatives
    candidates = torch.cat([anchors, extra], dim=0)
    not_self = ~torch.eye(n, candidates.shape[0], dtype=torch.bool, device=anchors.device)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)  # [N, N]
    no_label = torch.zeros(n, extra.shape[0], dtype=torch.bool, device=anchors.device)
    positive = torch.cat([same, no_label], dim=1) & not_self
    return info_nce(anchors, candidates, positive, not_self, temperature)


def spread_penalty(anchors: torch.Tensor, min_spread: float) -> torch.Tensor:
    """relu(min_spread - S) / min_spread, S = mean ||z_i - mean z||^2 of anchors [N, d].

    For unit vectors S = 1 - ||mean z||^2: 1 for directions spread evenly, 0 for a collapse,
    where this penalty is 1 and its gradient pushes every z away from the mean.
    """
    if min_spread <= 0.0 or anchors.shape[0] < 2:
        return anchors.sum() * 0.0
    spread = (anchors - anchors.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean()
    return F.relu(min_spread - spread) / min_spread


def metric_losses(
    embeddings: Embeddings, targets: BevTargets, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrast, spread) of the object-center embeddings in the metric space."""
    per_object = _maps_at(embeddings.metric, _fusion_indices(targets, config))  # [B, 3, M, d]
    b, s, m, d = per_object.shape
    present = embeddings.mask[:, :s].unsqueeze(2) * targets.mask.unsqueeze(1)  # [B, 3, M]
    labels = targets.labels.unsqueeze(1).expand(b, s, m)
    keep = present.reshape(-1) > 0.5
    chosen = per_object.reshape(-1, d)[keep][: config.max_metric_samples]
    chosen_labels = labels.reshape(-1)[keep][: config.max_metric_samples]
    negatives = background_embeddings(embeddings, targets, config)
    contrast = supervised_contrastive_loss(
        chosen, chosen_labels, config.metric_temperature, negatives
    )
    return contrast, spread_penalty(chosen, config.metric_min_spread)


def cross_modal_loss(
    outputs: Mapping[str, torch.Tensor],
    embeddings: Embeddings,
    targets: BevTargets,
    config: ModelConfig,
) -> torch.Tensor:
    cells = _fusion_indices(targets, config)
    teacher = _maps_at(embeddings.spatial[:, :1], cells)[:, 0].detach()  # LiDAR [B, M, d]
    predicted = _maps_at(embeddings.predicted, cells)  # radar, camera [B, 2, M, d]
    heat = gather_at(outputs["heatmap"], targets.indices).detach()  # [B, M, K]
    reliability = heat.gather(2, targets.labels.unsqueeze(-1)).squeeze(-1) * targets.mask
    reliability = reliability * embeddings.mask[:, 0:1]
    total = predicted.sum() * 0.0
    weight_sum = predicted.new_zeros(())
    for k, student in enumerate((1, 2)):
        weight = reliability * embeddings.mask[:, student : student + 1]
        cosine_distance = 1.0 - (predicted[:, k] * teacher).sum(-1)
        total = total + (weight * cosine_distance).sum()
        weight_sum = weight_sum + weight.sum()
    return total / weight_sum.clamp(min=1e-6)


def _summaries(embeddings: Embeddings, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized mean over present spatial modalities at cells [B, N] -> ([B, N, d], valid
    [B] where some spatial modality is present)."""
    values = _spatial_at(embeddings, cells)  # [B, 3, N, d]
    weights = embeddings.mask[:, :3].reshape(-1, 3, 1, 1)
    mean = (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.normalize(mean, dim=-1, eps=1e-6), embeddings.mask[:, :3].sum(1) > 0.5


def _instance_nce(
    src: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    dst: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    background: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE of objects (summary [B, M, d], ids [B, M], valid [B, M]) of one time against the
    objects of the other time plus background summaries [Q, d]."""
    (z_a, id_a, ok_a), (z_c, id_c, ok_c) = src, dst
    b, m, d = z_a.shape
    frame = torch.arange(b, device=z_a.device).repeat_interleave(m)
    same_id = id_a.reshape(-1, 1) == id_c.reshape(1, -1)
    same_frame = frame.unsqueeze(1) == frame.unsqueeze(0)
    usable = ok_a.reshape(-1, 1) & ok_c.reshape(1, -1)
    positive = same_id & same_frame & usable
    # The same instance in another frame of the batch is neither positive nor negative.
    allowed = ok_c.reshape(1, -1) & ~(same_id & ~same_frame)
    allowed = allowed & ok_a.reshape(-1, 1)
    n_bg = background.shape[0]
    bg_ok = torch.ones(b * m, n_bg, dtype=torch.bool, device=z_a.device)
    bg_no = torch.zeros(b * m, n_bg, dtype=torch.bool, device=z_a.device)
    return info_nce(
        z_a.reshape(-1, d),
        torch.cat([z_c.reshape(-1, d), background], dim=0),
        torch.cat([positive, bg_no], dim=1),
        torch.cat([allowed, bg_ok & ok_a.reshape(-1, 1)], dim=1),
        temperature,
    )


def _frame_objects(
    embeddings: Embeddings, targets: BevTargets, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    summary, frame_ok = _summaries(embeddings, _fusion_indices(targets, config))
    valid = (targets.mask > 0.5) & (targets.instance >= 0) & frame_ok.unsqueeze(1)
    return summary, targets.instance, valid


def _background_summaries(
    embeddings: Embeddings, targets: BevTargets, config: ModelConfig
) -> torch.Tensor:
    cells = background_cells(targets, config.metric_background_cells)
    free = ~_occupied_fusion_cells(targets).gather(1, cells)
    summary, frame_ok = _summaries(embeddings, cells)
    return summary[free & frame_ok.unsqueeze(1)]


def temporal_loss(
    embeddings: Embeddings,
    targets: BevTargets,
    next_embeddings: Embeddings,
    next_targets: BevTargets,
    config: ModelConfig,
) -> torch.Tensor:
    now = _frame_objects(embeddings, targets, config)
    later = _frame_objects(next_embeddings, next_targets, config)
    bg_now = _background_summaries(embeddings, targets, config)
    bg_later = _background_summaries(next_embeddings, next_targets, config)
    forward = _instance_nce(now, later, bg_later, config.temporal_temperature)
    backward = _instance_nce(later, now, bg_now, config.temporal_temperature)
    return 0.5 * (forward + backward)


def compute_losses(
    outputs: Mapping[str, torch.Tensor],
    embeddings: Embeddings,
    targets: BevTargets,
    config: ModelConfig,
    gmm: FeatureGmm | None = None,
    next_frame: tuple[Embeddings, BevTargets] | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term and the weighted `total` (see module doc).

    Keys: heatmap, box_iou, l1, attribute, det, metric (= metric_contrast + metric_spread),
    metric_contrast, metric_spread, cross_modal, temporal, gmm, consistency, total.
    next_frame: the embeddings and targets (with instance ids) of the following frame of the same
    sequences, for the temporal term; without it the temporal term is 0.
    """
    terms = detection_losses(outputs, targets, config)
    contrast, spread = metric_losses(embeddings, targets, config)
    terms["metric_contrast"], terms["metric_spread"] = contrast, spread
    terms["metric"] = contrast + spread
    terms["cross_modal"] = cross_modal_loss(outputs, embeddings, targets, config)
    zero = terms["det"] * 0.0
    terms["temporal"] = (
        temporal_loss(embeddings, targets, next_frame[0], next_frame[1], config)
        if next_frame is not None
        else zero
    )
    use_gmm = config.gmm_enabled and gmm is not None and gmm.is_fitted
    terms["gmm"] = (
        gmm.alignment_loss(embeddings.pooled).mean() if use_gmm and gmm is not None else zero
    )
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
