"""Training-step wall time of a ModelConfig on this machine (not a test).

    python -m peftdml_ros.tools.bench_train [--model-config CFG.json] [--pairs 4]
        [--threads 2] [--steps 8] [--full]

One step is what `peftdml train` does per batch: forward of `pairs` keyframe pairs (t and t+1,
2 * pairs frames) in one batch, every loss term (with the temporal pair), backward, gradient
clipping and an AdamW step, PEFT mode unless --full. Inputs are `example_inputs` (points uniform
in the range, 70% of the point slots filled) and 20 boxes per frame; data loading is not timed
(`peftdml train` reads preprocessed frames from its on-disk cache). Reports the median and minimum
over `steps` timed steps after 2 warm-up steps; the minimum is the figure to compare on a shared
machine (other load only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.detector_net import Embeddings, build_model, example_inputs
from peftdml_ros.core.model.lora import freeze_backbones
from peftdml_ros.core.model.losses import compute_losses
from peftdml_ros.core.model.targets import build_targets
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections

_BOXES_PER_FRAME = 20


def _boxes(config: ModelConfig, rng: np.random.Generator, count: int) -> Detections:
    x0, y0, _, x1, y1, _ = config.point_cloud_range_m
    center = np.stack(
        [rng.uniform(x0, x1, count), rng.uniform(y0, y1, count), np.full(count, 0.9)], axis=1
    )
    return Detections(
        center_m=center.astype(np.float32),
        size_wlh_m=np.tile(np.array([[1.9, 4.5, 1.7]], np.float32), (count, 1)),
        yaw_rad=rng.uniform(-math.pi, math.pi, count).astype(np.float32),
        velocity_mps=rng.uniform(-5.0, 5.0, (count, 2)).astype(np.float32),
        score=np.ones(count, np.float32),
        label=rng.integers(0, len(NUSCENES_CLASSES), count).astype(np.int64),
        attribute=("",) * count,
    )


def _split(e: Embeddings, n: int) -> tuple[Embeddings, Embeddings]:
    first = Embeddings(**{k: v[:n] for k, v in e.__dict__.items()})
    second = Embeddings(**{k: v[n:] for k, v in e.__dict__.items()})
    return first, second


def time_train_steps(
    config: ModelConfig, pairs: int, steps: int, peft: bool = True, seed: int = 0
) -> list[float]:
    """Wall seconds of `steps` training steps (after 2 untimed warm-up steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(config).train()
    if peft:
        freeze_backbones(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=1e-4)
    inputs = example_inputs(config, 2 * pairs, torch.Generator().manual_seed(seed))
    frames = [_boxes(config, rng, _BOXES_PER_FRAME) for _ in range(pairs)]
    ids = [np.arange(_BOXES_PER_FRAME, dtype=np.int64) + 100 * i for i in range(pairs)]
    now = build_targets(frames, config, instance_ids=ids)
    later = build_targets(frames, config, instance_ids=ids)
    samples = []
    for step in range(steps + 2):
        start = time.perf_counter()
        outputs, embeddings = model.forward_with_embeddings(inputs)
        emb_now, emb_later = _split(embeddings, pairs)
        out_now = {k: v[:pairs] for k, v in outputs.items()}
        out_later = {k: v[pairs:] for k, v in outputs.items()}
        terms_now = compute_losses(out_now, emb_now, now, config, next_frame=(emb_later, later))
        terms_later = compute_losses(out_later, emb_later, later, config)
        total = 0.5 * (terms_now["total"] + terms_later["total"])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 10.0)
        optimizer.step()
        if step >= 2:
            samples.append(time.perf_counter() - start)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-config", type=Path, help="JSON of ModelConfig fields")
    parser.add_argument("--pairs", type=int, default=4, help="keyframe pairs per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--full", action="store_true", help="train every parameter (not PEFT)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fields: dict[str, Any] = {}
    if args.model_config is not None:
        fields = json.loads(args.model_config.read_text())
    config = ModelConfig.from_dict({**ModelConfig().to_dict(), **fields})
    samples = time_train_steps(config, args.pairs, args.steps, peft=not args.full)
    label = str(args.model_config) if args.model_config else "default ModelConfig"
    print(
        f"{label}: grid {config.grid_hw}, {config.num_cameras} cameras {config.image_size_hw}, "
        f"{args.pairs} pairs ({2 * args.pairs} frames), {args.threads} threads, "
        f"{'full' if args.full else 'PEFT'}: step median {statistics.median(samples):.3f} s, "
        f"min {min(samples):.3f} s over {len(samples)} steps"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
