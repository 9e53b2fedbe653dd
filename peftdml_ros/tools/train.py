"""`peftdml train`: train PEFT-DML on a nuScenes-format dataset (real or generated).

    peftdml train --data DATAROOT --version v1.0-synth --split train --out runs/a --steps 2000

Reads top to bottom: arguments, data, model, optimizer, one loop (modality dropout, forward on
keyframes t and t+1, losses, step, log, checkpoint), the clean-feature GMM fit. Writes to --out:
  checkpoint.pt     every --ckpt-every steps and at the end (weights + ModelConfig + step),
  metrics.jsonl     one JSON line per step: step, lr, every loss term, seconds per step,
  config.json       the ModelConfig and the command-line arguments.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from peftdml_ros.core.backends.torch_backend import resolve_torch_device
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model import (
    Embeddings,
    ModelConfig,
    PeftDmlNet,
    build_model,
    compute_losses,
    freeze_backbones,
    load_checkpoint,
    parameter_report,
    sample_modality_dropout,
    save_checkpoint,
    tiny_config,
    unfreeze_all,
)
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.training import (
    KeyframeDataset,
    KeyframePairDataset,
    TrainingBatch,
    collate_pairs,
)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
# Loss terms shown in the progress bar (all terms go to metrics.jsonl).
_BAR_TERMS = ("total", "heatmap", "box_iou", "metric", "consistency")


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to base_lr over warmup_steps, then cosine decay to base_lr / 10."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="peftdml train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="nuScenes dataroot")
    p.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-mini, v1.0-synth")
    p.add_argument("--split", default="train", help="split name (or one in splits.json)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4, help="pairs (t, t+1) per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of --steps")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=10.0)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--peft",
        dest="peft",
        action="store_true",
        default=True,
        help="train LoRA, adapters, projections, fusion, head (default)",
    )
    mode.add_argument("--full", dest="peft", action="store_false", help="train everything")
    p.add_argument(
        "--modality-dropout",
        type=float,
        default=0.2,
        help="probability of dropping each present modality per sample",
    )
    p.add_argument(
        "--model-config",
        type=Path,
        default=None,
        help="JSON of ModelConfig fields (default: the default config)",
    )
    p.add_argument("--tiny", action="store_true", help="the tiny test config (smoke runs)")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this checkpoint's weights (its config is used)",
    )
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument(
        "--gmm-frames",
        type=int,
        default=64,
        help="clean keyframes whose pooled features fit the GMM at the end (0: skip)",
    )
    # The node feeds one sweep per sensor and frame; train on what the model will see.
    p.add_argument("--lidar-sweeps", type=int, default=1, help="LiDAR sweeps merged per keyframe")
    p.add_argument("--radar-sweeps", type=int, default=1, help="sweeps merged per radar")
    p.add_argument(
        "--compensate-ego-motion",
        action="store_true",
        help="align radars and cameras to the LiDAR's ego pose; off by default because the node "
        "places each sensor with its static extrinsics only (no odometry)",
    )
    p.add_argument("--camera-downscale", type=int, default=4, choices=(1, 2, 4, 8))
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--cache", action="store_true", help="keep preprocessed keyframes in memory (small data)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.ckpt_every < 1:
        raise ConfigError("--steps, --batch-size, --ckpt-every must be >= 1 and --lr > 0")
    if not 0.0 <= args.modality_dropout <= 1.0:
        raise ConfigError(f"--modality-dropout {args.modality_dropout} must be in [0, 1]")
    return args


def _model_config(args: argparse.Namespace) -> tuple[ModelConfig, PeftDmlNet | None]:
    if args.init is not None:
        loaded = load_checkpoint(args.init)
        return loaded.config, loaded.model
    if args.model_config is not None:
        return ModelConfig.from_dict(json.loads(args.model_config.read_text())), None
    return (tiny_config() if args.tiny else ModelConfig()), None


def _forever(loader: DataLoader[Any]) -> Iterator[tuple[TrainingBatch, TrainingBatch]]:
    while True:
        yield from loader


def _split_embeddings(e: Embeddings, n: int) -> tuple[Embeddings, Embeddings]:
    first = {k: v[:n] for k, v in e.__dict__.items()}
    second = {k: v[n:] for k, v in e.__dict__.items()}
    return Embeddings(**first), Embeddings(**second)


@torch.no_grad()
def fit_gmm(model: PeftDmlNet, keyframes: KeyframeDataset, frames: int, device: str) -> float:
    """Fit the clean-feature GMM on pooled fused features of the first `frames` keyframes."""
    model.eval()
    pooled = []
    for index in tqdm(range(min(frames, len(keyframes))), desc="gmm features", leave=False):
        inputs = keyframes[index].inputs
        tensors = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        pooled.append(model.forward_with_embeddings(tensors)[1].pooled.cpu())
    model.train()
    return model.gmm.fit(torch.cat(pooled), generator=torch.Generator().manual_seed(0))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    device = resolve_torch_device(args.device)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    # Data: pairs of consecutive keyframes (t, t+1) for the temporal consistency term.
    config, initial = _model_config(args)
    reader = NuScenesReader(
        args.data, args.version, args.split,
        lidar_sweeps=args.lidar_sweeps, radar_sweeps=args.radar_sweeps,
        compensate_ego_motion=args.compensate_ego_motion,
        camera_downscale=args.camera_downscale,
    )  # fmt: skip
    keyframes = KeyframeDataset(reader, config, cache=args.cache)
    # How the training frames were built; the node's matching settings are input.* and sync.* in
    # its parameters (a deployment should use the same), so they travel with the checkpoint.
    data_settings = {
        "lidar_sweeps": reader.lidar_sweeps,
        "radar_sweeps": reader.radar_sweeps,
        "camera_downscale": reader.camera_downscale,
        "radar_filter": reader.radar_filter,
        "imu_window_s": reader.imu_window_ns / 1e9,
        "compensate_ego_motion": reader.compensate_ego_motion,
    }
    pairs = KeyframePairDataset(keyframes)
    gmm_frames = min(args.gmm_frames, len(keyframes))
    if args.gmm_frames > 0 and config.gmm_enabled and gmm_frames < config.gmm_components:
        raise ConfigError(
            f"the GMM of {config.gmm_components} components needs as many keyframes, the split "
            f"has {len(keyframes)}: use more data, --gmm-frames 0, or fewer gmm_components"
        )
    loader = DataLoader(
        pairs,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(pairs) >= args.batch_size,
        collate_fn=functools.partial(collate_pairs, config=config),
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
    )

    # Model and optimizer: PEFT freezes the backbones except LoRA factors and adapters.
    model = initial if initial is not None else build_model(config)
    model.to(device).train()
    if args.peft:
        freeze_backbones(model)
    else:
        unfreeze_all(model)
    report = parameter_report(model)
    print(report.format_table())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.steps // 20)
    dropout_rng = torch.Generator().manual_seed(args.seed + 1)
    (args.out / "config.json").write_text(json.dumps(
        {"model_config": config.to_dict(), "args": {k: str(v) for k, v in vars(args).items()},
         "parameters": report.to_dict()}, indent=2))  # fmt: skip

    metrics = (args.out / METRICS_NAME).open("w")
    batches = _forever(loader)
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, args.steps, args.lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        now, later = (b.to(device) for b in next(batches))

        # One forward over t and t+1 together; each sample loses modalities independently.
        inputs = {k: torch.cat([now.inputs[k], later.inputs[k]]) for k in now.inputs}
        inputs["modality_mask"] = sample_modality_dropout(
            inputs["modality_mask"].cpu(), args.modality_dropout, dropout_rng
        ).to(device)
        outputs, embeddings = model.forward_with_embeddings(inputs)
        n = now.inputs["modality_mask"].shape[0]
        emb_now, emb_later = _split_embeddings(embeddings, n)
        out_now = {k: v[:n] for k, v in outputs.items()}
        out_later = {k: v[n:] for k, v in outputs.items()}
        gmm = model.gmm if model.gmm.is_fitted else None
        terms_now = compute_losses(
            out_now, emb_now, now.targets, config, gmm, next_frame=(emb_later, later.targets)
        )
        terms_later = compute_losses(out_later, emb_later, later.targets, config, gmm)
        terms = {k: 0.5 * (terms_now[k] + terms_later[k]) for k in terms_now}

        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip)
        optimizer.step()

        row = {"step": step + 1, "lr": lr, "grad_norm": float(grad_norm)}
        row.update({f"loss/{k}": float(v.detach()) for k, v in terms.items()})
        row["step_s"] = time.perf_counter() - t0
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        bar.set_postfix({k: f"{row[f'loss/{k}']:.3f}" for k in _BAR_TERMS if f"loss/{k}" in row})
        if not math.isfinite(row["loss/total"]):
            raise ConfigError(
                f"the loss became {row['loss/total']} at step {step + 1}: lower --lr or check "
                "the data (see metrics.jsonl for the terms)"
            )
        if (step + 1) % args.ckpt_every == 0 and step + 1 < args.steps:
            extra_now = {"step": step + 1, "peft": args.peft, "data": data_settings}
            save_checkpoint(args.out / CHECKPOINT_NAME, model, extra_now)
    metrics.close()

    # The clean-feature GMM: fitted on unmasked keyframes after training (normality score).
    extra: dict[str, Any] = {"step": args.steps, "peft": args.peft, "data": data_settings}
    if args.gmm_frames > 0 and config.gmm_enabled:
        extra["gmm_mean_log_likelihood"] = fit_gmm(model, keyframes, args.gmm_frames, device)
    path = save_checkpoint(args.out / CHECKPOINT_NAME, model.cpu(), extra)
    print(f"wrote {path} (loss {row['loss/total']:.4f} at step {args.steps})")
    return 0
