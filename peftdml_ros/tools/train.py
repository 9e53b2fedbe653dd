"""`peftdml train`: train PEFT-DML on a nuScenes-format dataset (real or generated).

    peftdml train --data D --version v1.0-synth --split synth_all --out runs/pre --stage pretrain \
        --val-data V --val-split synth_all --time-budget-min 30
    peftdml train ... --out runs/peft --stage peft --init runs/pre/best.pt

Stages: `pretrain` trains every parameter from a fresh model; `finetune` trains every parameter
from `--init`; `peft` starts from `--init` (a pretrained checkpoint), freezes the backbones and
trains LoRA, adapters, projections, fusion and head.

Reads top to bottom: arguments, data (the on-disk cache of preprocessed frames), model, optimizer,
one loop (augmentation and sensor dropout on the cached frames, forward on keyframes t and t+1,
losses, step, log, validation, checkpoint), the clean-feature GMM fit. Writes to --out:
  checkpoint.pt     the newest weights (+ ModelConfig, step, how the frames were built),
  best.pt           the weights with the best validation NDS (with --val-data),
  train_state.pt    optimizer, step, wall time and best score: `--resume` continues from it
                    (random streams are re-seeded from the step, not replayed),
  metrics.jsonl     one JSON line per step: step, lr, every loss term, seconds per step,
  val.jsonl         one JSON line per validation: step, wall time, mAP, NDS, TP errors,
  config.json       the ModelConfig and the command-line arguments,
  gmm.jsonl         one JSON line per fit of the clean-feature GMM (step, frames, mean
                    log-likelihood, seconds),
  gmm_holdout.json  with --gmm-holdout-frames: the held-out keyframes (indices, sample tokens).

The clean-feature GMM (the normality score, and the alignment loss when weight_gmm > 0) is
fitted after the last step by default. With --gmm-holdout-frames N, N keyframes drawn at random
(seeded by --seed) are held out of the training pairs and every fit uses them; with
--gmm-start-frac F it is first fitted once the run is F done and refitted every
--gmm-refit-every K steps, so the alignment loss trains for the rest of the run. With
--val-data, the final model's normality scores on the validation frames are stored as its
health calibration (core/health.py).

Multi-GPU: `torchrun --nproc-per-node N -m peftdml_ros.tools.cli train ...` runs one process per
GPU with DistributedDataParallel (gloo on CPU); rank 0 writes every file.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from peftdml_ros.core.backends.torch_backend import resolve_torch_device
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.health import CALIBRATION_KEY
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
from peftdml_ros.core.preprocess import PreprocessConfig
from peftdml_ros.data.augment import (
    Augmentation,
    AugmentConfig,
    AugmentedPairs,
    SensorDropoutConfig,
)
from peftdml_ros.data.cache import CACHE_DIR_NAME, CachedKeyframes, build_or_load_cache
from peftdml_ros.data.evaluation import DetectionMetrics, evaluate_items, torch_predictor
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.training import (
    KeyframePairDataset,
    KeyframeSource,
    TrainingBatch,
    collate_pairs,
)

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"
VAL_NAME = "val.jsonl"
STAGES = ("pretrain", "finetune", "peft")
# Loss terms shown in the progress bar (all terms go to metrics.jsonl).
_BAR_TERMS = ("total", "heatmap", "box_iou", "metric", "consistency")


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to base_lr over warmup_steps, then cosine decay to base_lr / 10."""
    return lr_at_progress(step, warmup_steps, base_lr, _progress(step, total_steps, warmup_steps))


def lr_at_progress(step: int, warmup_steps: int, base_lr: float, progress: float) -> float:
    """Warm-up by step, then cosine decay to base_lr / 10 by `progress` in [0, 1]."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, max(0.0, progress))
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    return (step - warmup_steps) / max(1, total_steps - warmup_steps)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="peftdml train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="nuScenes dataroot")
    p.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-mini, v1.0-synth")
    p.add_argument("--split", default="train", help="split name (or one in splits.json)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument(
        "--stage",
        choices=STAGES,
        default="pretrain",
        help="pretrain: all from scratch; finetune: all from --init; peft: frozen "
        "backbones from --init",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="checkpoint to start from (finetune, peft); its config is used",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (weights, optimizer, step, wall time, best score)",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (upper bound)")
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="stop after this many minutes of wall time in the loop (steps and validations; "
        "cache building excluded); the LR schedule follows whichever of steps and time runs out "
        "first",
    )
    p.add_argument("--batch-size", type=int, default=4, help="pairs (t, t+1) per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of --steps")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=10.0)
    p.add_argument(
        "--modality-dropout",
        type=float,
        default=0.2,
        help="probability of dropping each present modality per sample",
    )
    p.add_argument(
        "--sensor-dropout",
        type=float,
        default=0.1,
        help="probability of dropping each single camera and radar per sample",
    )
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no global rotation, flip and scale of the ego frame",
    )
    p.add_argument(
        "--model-config",
        type=Path,
        default=None,
        help="JSON of ModelConfig fields (default: the default config)",
    )
    p.add_argument("--tiny", action="store_true", help="the tiny test config (smoke runs)")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument(
        "--val-data",
        type=Path,
        default=None,
        help="dataroot of the validation data (held out from training; never the evaluation set)",
    )
    p.add_argument("--val-version", default=None, help="default: --version")
    p.add_argument("--val-split", default=None, help="split of --val-data (default: --split)")
    p.add_argument("--val-every", type=int, default=200, help="steps between validations")
    p.add_argument(
        "--gmm-frames",
        type=int,
        default=64,
        help="clean keyframes whose pooled features fit the GMM at the end (0: skip); with "
        "--gmm-holdout-frames the held-out keyframes are used instead",
    )
    p.add_argument(
        "--gmm-holdout-frames",
        type=int,
        default=0,
        metavar="N",
        help="hold N training keyframes (a seeded random draw) out of the training pairs and "
        "fit the GMM on them, so that it models features of frames the losses never trained "
        "on (0: no hold-out)",
    )
    p.add_argument(
        "--gmm-holdout-scenes",
        nargs="+",
        default=None,
        metavar="SCENE",
        help="draw the held-out keyframes only from these scenes (e.g. the clean scenes of a "
        "split that also holds degraded ones: the GMM models clean features)",
    )
    p.add_argument(
        "--gmm-start-frac",
        type=float,
        default=None,
        metavar="F",
        help="fit the GMM on the held-out keyframes once the run is F done (by steps or by "
        "--time-budget-min, whichever is further), making the alignment loss (weight_gmm) live "
        "for the rest of the run (default: fit after the last step only)",
    )
    p.add_argument(
        "--gmm-refit-every",
        type=int,
        default=0,
        metavar="K",
        help="after the first fit, refit the GMM every K steps on the held-out keyframes "
        "(0: never), so it follows the features as they train",
    )
    # The node feeds one sweep per sensor and frame; train on what the model will see.
    p.add_argument("--lidar-sweeps", type=int, default=1, help="LiDAR sweeps merged per keyframe")
    p.add_argument("--radar-sweeps", type=int, default=1, help="sweeps merged per radar")
    p.add_argument(
        "--compensate-ego-motion",
        action="store_true",
        help="align radars and cameras to the LiDAR's ego pose; off by default because "
        "the node places each sensor with its static extrinsics only (no odometry)",
    )
    p.add_argument("--camera-downscale", type=int, default=4, choices=(1, 2, 4, 8))
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessed-frame cache (default: <data>/.peftdml_cache)",
    )
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--amp",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast on CUDA (auto: on where the GPU supports it)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.ckpt_every < 1:
        raise ConfigError("--steps, --batch-size, --ckpt-every must be >= 1 and --lr > 0")
    for name in ("modality_dropout", "sensor_dropout"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ConfigError(
                f"--{name.replace('_', '-')} {getattr(args, name)} must be in [0, 1]"
            )
    if args.stage in ("finetune", "peft") and args.init is None and not args.resume:
        raise ConfigError(
            f"--stage {args.stage} starts from a pretrained model: pass --init CHECKPOINT (e.g. "
            "the best.pt of a `--stage pretrain` run); a randomly initialized backbone frozen "
            "for PEFT learns nothing"
        )
    if args.stage == "pretrain" and args.init is not None:
        raise ConfigError("--stage pretrain trains from scratch: drop --init, or use --stage "
                          "finetune / peft to start from a checkpoint")  # fmt: skip
    if args.time_budget_min is not None and args.time_budget_min <= 0:
        raise ConfigError(f"--time-budget-min {args.time_budget_min} must be > 0")
    if args.val_every < 1:
        raise ConfigError(f"--val-every {args.val_every} must be >= 1")
    _check_gmm_args(args)


def _check_gmm_args(args: argparse.Namespace) -> None:
    if args.gmm_frames < 0 or args.gmm_holdout_frames < 0 or args.gmm_refit_every < 0:
        raise ConfigError("--gmm-frames, --gmm-holdout-frames and --gmm-refit-every must be >= 0")
    if args.gmm_start_frac is not None:
        if not 0.0 <= args.gmm_start_frac <= 1.0:
            raise ConfigError(f"--gmm-start-frac {args.gmm_start_frac} must be in [0, 1]")
        if args.gmm_holdout_frames == 0:
            raise ConfigError(
                "--gmm-start-frac fits the GMM during training on held-out keyframes: give "
                "--gmm-holdout-frames N too (e.g. 64)"
            )
    elif args.gmm_refit_every > 0:
        raise ConfigError(
            "--gmm-refit-every refits a GMM fitted during training: give --gmm-start-frac F "
            "(and --gmm-holdout-frames N) too"
        )


# ------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_arg: str) -> tuple[Distributed, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), torch.device(resolve_torch_device(device_arg))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_arg != "cpu"
    # Only rank 0 validates while the others wait in the next all-reduce: a long timeout.
    torch.distributed.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2)
    )
    if cuda:
        torch.cuda.set_device(local_rank)
        return Distributed(rank, world, local_rank), torch.device("cuda", local_rank)
    return Distributed(rank, world, local_rank), torch.device("cpu")


class _TrainForward(nn.Module):
    """DistributedDataParallel synchronizes gradients of `forward` only: route the training
    forward (outputs and embeddings) through it."""

    def __init__(self, net: PeftDmlNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        outputs, embeddings = self.net.forward_with_embeddings(inputs)
        return outputs, embeddings


# ------------------------------------------------------------------------------------- data


def _reader(args: argparse.Namespace, data: Path, version: str, split: str) -> NuScenesReader:
    return NuScenesReader(
        data, version, split,
        lidar_sweeps=args.lidar_sweeps, radar_sweeps=args.radar_sweeps,
        compensate_ego_motion=args.compensate_ego_motion,
        camera_downscale=args.camera_downscale,
    )  # fmt: skip


def data_settings(reader: NuScenesReader) -> dict[str, Any]:
    """How the training frames were built; the node's matching settings are input.* and sync.*
    in its parameters (a deployment should use the same), so they travel with the checkpoint."""
    return {
        "lidar_sweeps": reader.lidar_sweeps,
        "radar_sweeps": reader.radar_sweeps,
        "camera_downscale": reader.camera_downscale,
        "radar_filter": reader.radar_filter,
        "imu_window_s": reader.imu_window_ns / 1e9,
        "slop_s": reader.slop_s,
        "gnss_staleness_s": reader.gnss_staleness_s,
        "compensate_ego_motion": reader.compensate_ego_motion,
    }


def _forever(loader: DataLoader[Any], sampler: DistributedSampler[Any] | None) -> Iterator[Any]:
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _split_embeddings(e: Embeddings, n: int) -> tuple[Embeddings, Embeddings]:
    first = {k: v[:n] for k, v in e.__dict__.items()}
    second = {k: v[n:] for k, v in e.__dict__.items()}
    return Embeddings(**first), Embeddings(**second)


# ---------------------------------------------------------------------------- model, state


def _model_config(args: argparse.Namespace) -> tuple[ModelConfig, PeftDmlNet | None]:
    if args.init is not None:
        loaded = load_checkpoint(args.init)
        return loaded.config, loaded.model
    if args.model_config is not None:
        return ModelConfig.from_dict(json.loads(args.model_config.read_text())), None
    return (tiny_config() if args.tiny else ModelConfig()), None


@dataclass
class RunState:
    """What `--resume` restores besides the weights."""

    step: int = 0
    train_s: float = 0.0  # wall time of the loop so far: steps and validations
    best_nds: float = -1.0
    best_step: int = 0


def _save_state(path: Path, optimizer: torch.optim.Optimizer, state: RunState) -> None:
    payload = {
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "train_s": state.train_s,
        "best_nds": state.best_nds,
        "best_step": state.best_step,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half state


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"--resume found no {path.name} in {path.parent}: start the run without --resume"
        )
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return payload


def _run_state(payload: dict[str, Any]) -> RunState:
    return RunState(
        step=int(payload["step"]),
        train_s=float(payload["train_s"]),
        best_nds=float(payload["best_nds"]),
        best_step=int(payload["best_step"]),
    )


# ---------------------------------------------------------------------- clean-feature GMM

GMM_LOG_NAME = "gmm.jsonl"
GMM_HOLDOUT_NAME = "gmm_holdout.json"
_GMM_BATCH = 8  # keyframes per forward while collecting features


def spread_indices(count: int, frames: int) -> list[int]:
    """`frames` indices spread evenly over range(count) (all of them if frames >= count)."""
    if frames <= 0 or count <= 0:
        return []
    return [int(i) for i in np.unique(np.linspace(0, count - 1, min(frames, count)).round())]


def holdout_indices(
    count: int, frames: int, seed: int, candidates: Sequence[int] | None = None
) -> list[int]:
    """The keyframes held out for the GMM: `frames` of `candidates` (default: range(count))
    drawn without replacement by a generator seeded with `seed` (the same draw on --resume),
    sorted."""
    if frames <= 0:
        return []
    if frames >= count:
        raise ConfigError(
            f"--gmm-holdout-frames {frames} leaves nothing to train on: the split has {count} "
            "keyframes; hold out fewer"
        )
    pool = np.arange(count) if candidates is None else np.asarray(sorted(candidates))
    if frames > len(pool):
        raise ConfigError(
            f"--gmm-holdout-frames {frames} is more than the {len(pool)} keyframes of "
            "--gmm-holdout-scenes: hold out fewer or name more scenes"
        )
    drawn = pool[np.random.default_rng(seed).permutation(len(pool))[:frames]]
    return sorted(int(i) for i in drawn)


def holdout_candidates(
    keyframes: KeyframeSource, scenes: Sequence[str] | None
) -> list[int] | None:
    """Indices of the keyframes of `scenes` (None: every keyframe may be held out)."""
    if scenes is None:
        return None
    names = keyframes.scene_names()
    unknown = sorted(set(scenes) - set(names))
    if unknown:
        raise ConfigError(
            f"--gmm-holdout-scenes names {unknown}, which the split does not hold; it has "
            f"{sorted(set(names))}"
        )
    return [i for i, name in enumerate(names) if name in set(scenes)]


def training_pairs(keyframes: KeyframeSource, held_out: Sequence[int]) -> KeyframePairDataset:
    """The (t, t+1) pairs of the split without any pair that touches a held-out keyframe."""
    pairs = KeyframePairDataset(keyframes)
    if held_out:
        excluded = set(held_out)
        pairs.pairs = [p for p in pairs.pairs if p[0] not in excluded and p[1] not in excluded]
        if not pairs.pairs:
            raise ConfigError(
                f"holding out {len(excluded)} keyframes leaves no (t, t+1) pair to train on: "
                "hold out fewer (--gmm-holdout-frames) or use more data"
            )
    return pairs


@dataclass(frozen=True)
class GmmRefits:
    """When the GMM is fitted during training: first once the run is `start_frac` done, then
    at every step that is a multiple of `every` (0: never again). A step-based cadence needs no
    state of its own: a resumed run finds the fitted GMM in the checkpoint's buffers (they are
    in the state dict) and keeps refitting at the same steps."""

    indices: tuple[int, ...]
    start_frac: float
    every: int

    def due(self, step: int, run_fraction: float, fitted: bool) -> bool:
        if not fitted:
            return run_fraction >= self.start_frac
        return self.every > 0 and step > 0 and step % self.every == 0


@torch.no_grad()
def fit_gmm(model: PeftDmlNet, keyframes: KeyframeSource, frames: int | Sequence[int],
            device: torch.device | str, progress: bool = True) -> float:  # fmt: skip
    """Fit the clean-feature GMM on pooled fused features (eval mode, every modality present)
    of keyframes: `frames` spread evenly over the split, or the given indices. Returns the mean
    log-likelihood; the model's train/eval mode is restored."""
    picks = spread_indices(len(keyframes), frames) if isinstance(frames, int) else list(frames)
    was_training = model.training
    model.eval()
    pooled = []
    batches = [picks[i : i + _GMM_BATCH] for i in range(0, len(picks), _GMM_BATCH)]
    for batch in tqdm(batches, desc="gmm features", leave=False, disable=not progress):
        items = [keyframes[index].inputs for index in batch]
        tensors = {
            k: torch.from_numpy(np.concatenate([item[k] for item in items])).to(device)
            for k in items[0]
        }
        pooled.append(model.forward_with_embeddings(tensors)[1].pooled.float().cpu())
    model.train(was_training)
    return float(model.gmm.fit(torch.cat(pooled), generator=torch.Generator().manual_seed(0)))


def _refit_gmm(model: PeftDmlNet, keyframes: KeyframeSource, refits: GmmRefits, step: int,
               device: torch.device, log: Any, progress: bool) -> float:  # fmt: skip
    """One fit during training; returns its wall time (s), logged to gmm.jsonl."""
    t0 = time.perf_counter()
    mean_ll = fit_gmm(model, keyframes, refits.indices, device, progress)
    fit_s = time.perf_counter() - t0
    if log is not None:
        row = {"step": step, "frames": len(refits.indices), "mean_log_likelihood": mean_ll,
               "fit_s": round(fit_s, 2)}  # fmt: skip
        log.write(json.dumps(row) + "\n")
        log.flush()
    if progress:
        tqdm.write(f"GMM fitted on {len(refits.indices)} held-out keyframes at step {step}: "
                   f"mean log-likelihood {mean_ll:.1f} ({fit_s:.1f} s)")  # fmt: skip
    return fit_s


def _write_holdout(path: Path, keyframes: KeyframeSource, held_out: Sequence[int],
                   seed: int) -> None:  # fmt: skip
    tokens = [keyframes[i].sample_token for i in held_out]
    path.write_text(json.dumps({"seed": seed, "indices": list(held_out),
                                "sample_tokens": tokens}, indent=1) + "\n")  # fmt: skip


def _calibrate(model: PeftDmlNet, items: KeyframeSource, dataset: dict[str, Any],
               device: torch.device) -> dict[str, Any]:  # fmt: skip
    """The health calibration (core/health.py) of the model's normality score on clean
    validation keyframes, as stored in a checkpoint's extra."""
    from peftdml_ros.tools.calibrate import calibrate_keyframes, torch_scorer

    scorer = torch_scorer(model, device)
    return calibrate_keyframes(scorer, items, dataset, progress=False).to_dict()


def _validate(model: PeftDmlNet, items: KeyframeSource, reader: NuScenesReader,
              out_dir: Path, device: torch.device) -> DetectionMetrics:  # fmt: skip
    # torch_predictor runs the forward in eval mode and restores every module's mode after.
    every = (items[index] for index in range(len(items)))
    return evaluate_items(
        torch_predictor(model, model.config, device), every, reader, out_dir, progress=False
    )


# ------------------------------------------------------------------------------------- main


def _trim_log(path: Path, last_step: int) -> None:
    """Drop the lines of steps after `last_step` (logged after the checkpoint we resume)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def _cache(reader: NuScenesReader, preprocess: PreprocessConfig, root: Path,
           dist: Distributed) -> CachedKeyframes:  # fmt: skip
    """Rank 0 builds the cache while the other ranks wait, then they read it."""
    if dist.world > 1 and not dist.is_main:
        torch.distributed.barrier()
    keyframes = build_or_load_cache(reader, preprocess, root, progress=dist.is_main)
    if dist.world > 1 and dist.is_main:
        torch.distributed.barrier()
    return keyframes


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    dist, device = _init_distributed(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    saved: dict[str, Any] | None = None
    if args.resume:
        args.init = args.out / CHECKPOINT_NAME
        saved = _read_state(args.out / STATE_NAME)
    state = _run_state(saved) if saved is not None else RunState()
    # Random streams (shuffling, augmentation, dropout) are seeded from the seed, the rank and
    # the step the run starts at, so a resumed run draws new numbers rather than replaying the
    # first epoch, and ranks differ.
    seed = args.seed + 1000 * dist.rank + 7919 * state.step
    torch.manual_seed(seed)
    amp = args.amp == "on" or (
        args.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )

    # Data: cached, preprocessed keyframes; pairs (t, t+1) for the temporal consistency term.
    config, initial = _model_config(args)
    preprocess = PreprocessConfig.from_model_config(config)
    reader = _reader(args, args.data, args.version, args.split)
    cache_root = args.cache_dir or args.data / CACHE_DIR_NAME
    keyframes = _cache(reader, preprocess, cache_root, dist)
    settings = data_settings(reader)
    augmentation = Augmentation(
        preprocess,
        AugmentConfig() if args.augment else None,
        SensorDropoutConfig(camera_p=args.sensor_dropout, radar_p=args.sensor_dropout),
    )
    # Keyframes held out for the GMM never enter a training pair (seeded: the same on resume).
    held_out = holdout_indices(
        len(keyframes), args.gmm_holdout_frames, args.seed,
        holdout_candidates(keyframes, args.gmm_holdout_scenes),
    )  # fmt: skip
    pairs = AugmentedPairs(training_pairs(keyframes, held_out), augmentation, seed)
    val_reader = val_items = None
    if args.val_data is not None:
        val_reader = _reader(args, args.val_data, args.val_version or args.version,
                             args.val_split or args.split)  # fmt: skip
        val_items = _cache(val_reader, preprocess,
                           args.cache_dir or args.val_data / CACHE_DIR_NAME, dist)  # fmt: skip
    gmm_frames = min(args.gmm_frames, len(keyframes))
    if args.gmm_frames > 0 and config.gmm_enabled and gmm_frames < config.gmm_components:
        raise ConfigError(
            f"the GMM of {config.gmm_components} components needs as many keyframes, the split "
            f"has {len(keyframes)}: use more data, --gmm-frames 0, or fewer gmm_components"
        )
    if held_out and config.gmm_enabled and len(held_out) < config.gmm_components:
        raise ConfigError(
            f"the GMM of {config.gmm_components} components needs as many keyframes: hold out "
            f"at least {config.gmm_components} (--gmm-holdout-frames {len(held_out)})"
        )
    if args.gmm_start_frac is not None and not config.gmm_enabled:
        raise ConfigError("--gmm-start-frac needs a model with gmm_enabled")
    if args.gmm_start_frac is not None and config.weight_gmm == 0 and dist.is_main:
        print("peftdml train: weight_gmm is 0: the GMM is fitted during training but the "
              "alignment loss has no weight")  # fmt: skip
    if held_out and dist.is_main:
        _write_holdout(args.out / GMM_HOLDOUT_NAME, keyframes, held_out, args.seed)
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(pairs, dist.world, dist.rank, shuffle=True, seed=args.seed + state.step)
        if dist.world > 1
        else None
    )
    loader = DataLoader(
        pairs,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(pairs) >= args.batch_size * dist.world,
        collate_fn=functools.partial(collate_pairs, config=config),
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )

    # Model and optimizer: PEFT freezes the backbones except LoRA factors and adapters.
    model = initial if initial is not None else build_model(config)
    model.to(device)
    if args.stage == "peft":
        freeze_backbones(model)
    else:
        unfreeze_all(model)
    # GroupNorm and LayerNorm keep no running statistics: frozen backbones need no eval mode.
    model.train()
    report = parameter_report(model)
    if dist.is_main:
        print(report.format_table())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    forward: nn.Module = _TrainForward(model)
    if dist.world > 1:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[dist.local_rank] if device.type == "cuda" else None
        )
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.steps // 20)
    dropout_rng = torch.Generator().manual_seed(seed + 1)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        if dist.is_main:
            _trim_log(args.out / METRICS_NAME, state.step)
            _trim_log(args.out / VAL_NAME, state.step)
    if dist.is_main and not args.resume:
        (args.out / "config.json").write_text(json.dumps(
            {"model_config": config.to_dict(), "stage": args.stage,
             "args": {k: str(v) for k, v in vars(args).items()},
             "parameters": report.to_dict(), "data": {**settings, "pairs": len(pairs)}},
            indent=2))  # fmt: skip

    def extra(step: int, **more: Any) -> dict[str, Any]:
        return {"step": step, "stage": args.stage, "peft": args.stage == "peft",
                "data": settings, **more}  # fmt: skip

    def progress_now(step: int) -> float:
        by_step = _progress(step, args.steps, warmup)
        if args.time_budget_min is None:
            return by_step
        return max(by_step, state.train_s / (60.0 * float(args.time_budget_min)))

    def out_of_budget() -> bool:
        return args.time_budget_min is not None and state.train_s >= 60.0 * float(
            args.time_budget_min
        )

    mode = "a" if args.resume else "w"
    metrics = (args.out / METRICS_NAME).open(mode) if dist.is_main else None
    val_log = (args.out / VAL_NAME).open(mode) if dist.is_main else None
    batches = _forever(loader, sampler)
    bar = tqdm(total=args.steps, initial=state.step, desc=f"train ({args.stage})", unit="step",
               disable=args.quiet or not dist.is_main, dynamic_ncols=True)  # fmt: skip
    postfix: dict[str, str] = {}
    row: dict[str, Any] = {}
    last = False
    # The clean-feature GMM during training (--gmm-start-frac): only rank 0 fits it; DDP
    # broadcasts rank 0's buffers, the GMM's included, to every rank at each forward.
    refits = (
        GmmRefits(tuple(held_out), float(args.gmm_start_frac), args.gmm_refit_every)
        if args.gmm_start_frac is not None
        else None
    )
    if dist.is_main and args.resume:
        _trim_log(args.out / GMM_LOG_NAME, state.step)
    gmm_log = (args.out / GMM_LOG_NAME).open(mode) if dist.is_main else None

    def run_fraction() -> float:
        by_time = (
            state.train_s / (60.0 * float(args.time_budget_min)) if args.time_budget_min else 0.0
        )
        return max(state.step / float(args.steps), by_time)

    while not last and state.step < args.steps and not out_of_budget():
        if (
            refits is not None
            and dist.is_main
            and refits.due(state.step, run_fraction(), model.gmm.is_fitted)
        ):
            state.train_s += _refit_gmm(model, keyframes, refits, state.step, device, gmm_log,
                                        not args.quiet)  # fmt: skip
        t0 = time.perf_counter()
        lr = lr_at_progress(state.step, warmup, args.lr, progress_now(state.step))
        for group in optimizer.param_groups:
            group["lr"] = lr
        now, later = (b.to(device) for b in next(batches))

        # One forward over t and t+1 together; each sample loses modalities independently.
        inputs = {k: torch.cat([now.inputs[k], later.inputs[k]]) for k in now.inputs}
        # Modalities the model does not read are absent before dropout, so that dropout keeps
        # one the model reads.
        readable = inputs["modality_mask"].cpu() * torch.tensor(config.input_modality_mask)
        inputs["modality_mask"] = sample_modality_dropout(
            readable, args.modality_dropout, dropout_rng
        ).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs, embeddings = forward(inputs)
        outputs = {k: v.float() for k, v in outputs.items()}
        embeddings = Embeddings(**{k: v.float() for k, v in embeddings.__dict__.items()})
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
        state.step += 1
        step_s = time.perf_counter() - t0
        state.train_s += step_s

        row = {"step": state.step, "lr": lr, "grad_norm": float(grad_norm)}
        row.update({f"loss/{k}": float(v.detach()) for k, v in terms.items()})
        row["step_s"] = step_s
        row["peak_rss_mb"] = _peak_rss_mb()
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        if not math.isfinite(row["loss/total"]):
            raise ConfigError(
                f"the loss became {row['loss/total']} at step {state.step}: lower --lr or check "
                "the data (see metrics.jsonl for the terms)"
            )
        postfix.update({k: f"{row[f'loss/{k}']:.3f}" for k in _BAR_TERMS if f"loss/{k}" in row})
        last = _agree(state.step >= args.steps or out_of_budget(), dist, device)
        if dist.is_main and val_items is not None and (state.step % args.val_every == 0 or last):
            assert val_reader is not None and val_log is not None
            t_val = time.perf_counter()
            scores = _validate(model, val_items, val_reader, args.out / "val", device)
            state.train_s += time.perf_counter() - t_val
            val_log.write(json.dumps({"step": state.step, "train_s": round(state.train_s, 1),
                                      "mAP": scores.mean_ap, "NDS": scores.nd_score,
                                      **scores.tp_errors}) + "\n")  # fmt: skip
            val_log.flush()
            postfix["NDS"] = f"{scores.nd_score:.3f}"
            if scores.nd_score > state.best_nds:
                state.best_nds, state.best_step = scores.nd_score, state.step
                save_checkpoint(args.out / BEST_NAME, model,
                                extra(state.step, val_nds=scores.nd_score,
                                      val_map=scores.mean_ap))  # fmt: skip
            postfix["best"] = f"{state.best_nds:.3f}@{state.best_step}"
        bar.set_postfix(postfix)
        bar.update(1)
        if dist.is_main and (state.step % args.ckpt_every == 0 and not last):
            save_checkpoint(args.out / CHECKPOINT_NAME, model, extra(state.step))
            _save_state(args.out / STATE_NAME, optimizer, state)
    bar.close()
    for handle in (metrics, val_log):
        if handle is not None:
            handle.close()
    if not dist.is_main:
        torch.distributed.destroy_process_group()
        return 0

    # The clean-feature GMM: fitted on unmasked keyframes after training (normality score),
    # the held-out ones when there are; then the health calibration on the validation frames.
    final_extra = extra(state.step, train_s=round(state.train_s, 1))
    show = not args.quiet
    picks = held_out or spread_indices(len(keyframes), args.gmm_frames)
    calibration_data = None
    if val_items is not None and val_reader is not None:
        from peftdml_ros.tools.calibrate import dataset_fingerprint

        val_split = args.val_split or args.split
        calibration_data = (val_items, dataset_fingerprint(val_reader, val_split, len(val_items)))
    if picks and config.gmm_enabled:
        mean_ll = fit_gmm(model, keyframes, picks, device, show)
        final_extra["gmm_mean_log_likelihood"] = mean_ll
        if gmm_log is not None:
            gmm_log.write(json.dumps({"step": state.step, "frames": len(picks), "final": True,
                                      "mean_log_likelihood": mean_ll}) + "\n")  # fmt: skip
        if (args.out / BEST_NAME).is_file():
            _fit_gmm_into(args.out / BEST_NAME, keyframes, picks, device, show, calibration_data)
    if gmm_log is not None:
        gmm_log.close()
    if calibration_data is not None and model.gmm.is_fitted:
        final_extra[CALIBRATION_KEY] = _calibrate(model, *calibration_data, device)
    path = save_checkpoint(args.out / CHECKPOINT_NAME, model.cpu(), final_extra)
    _save_state(args.out / STATE_NAME, optimizer, state)
    print(f"wrote {path} (loss {row.get('loss/total', float('nan')):.4f} at step {state.step}, "
          f"{state.train_s / 60:.1f} min of training)")  # fmt: skip
    if val_items is not None:
        print(f"best validation NDS {state.best_nds:.4f} at step {state.best_step}: "
              f"{args.out / BEST_NAME}")  # fmt: skip
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return 0


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _fit_gmm_into(path: Path, keyframes: KeyframeSource, frames: int | Sequence[int],
                  device: torch.device, progress: bool,
                  calibration_data: tuple[KeyframeSource, dict[str, Any]] | None = None,
                  ) -> None:  # fmt: skip
    """Give the best checkpoint its own clean-feature GMM (it is the one that ships) and, with
    validation frames, its own health calibration."""
    loaded = load_checkpoint(path)
    model = loaded.model.to(device)
    loaded.extra["gmm_mean_log_likelihood"] = fit_gmm(model, keyframes, frames, device, progress)
    if calibration_data is not None:
        loaded.extra[CALIBRATION_KEY] = _calibrate(model, *calibration_data, device)
    save_checkpoint(path, model.cpu(), loaded.extra)


def _agree(stop: bool, dist: Distributed, device: torch.device) -> bool:
    """Rank 0's decision for every rank (only rank 0 validates, so clocks differ)."""
    if dist.world <= 1:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item() > 0.5)


__all__ = ["TrainingBatch", "lr_at", "main"]
