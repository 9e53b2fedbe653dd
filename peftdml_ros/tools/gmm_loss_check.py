"""How big the GMM alignment term's gradient is, raw -log p against the loss training uses.

    python -m peftdml_ros.tools.gmm_loss_check --checkpoint models/peftdml_synth_cpu30.pt \
        --dataroot data/val_s12 --version v1.0-synth --split synth_all

For a few clean keyframes, as recorded and with the LiDAR dropped (what modality dropout does in
training), prints the value and the gradient norm over the trainable parameters (train mode,
times the model's weight_gmm) of: the raw mean -log p, the same per dimension, and
FeatureGmm.alignment_loss. The numbers in docs/model.md ("Sensor-health score") come from here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from peftdml_ros.core.model import load_checkpoint
from peftdml_ros.core.preprocess import remove_modalities
from peftdml_ros.core.types import Modality
from peftdml_ros.data.cache import CACHE_DIR_NAME
from peftdml_ros.data.nuscenes_reader import NuScenesReader


def main(argv: Sequence[str] | None = None) -> int:
    from peftdml_ros.tools.eval import open_keyframes, reader_settings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with a GMM")
    p.add_argument("--dataroot", type=Path, required=True)
    p.add_argument("--version", default="v1.0-synth")
    p.add_argument("--split", default="synth_all")
    p.add_argument("--frames", type=int, default=4, help="keyframes, spread over the split")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    loaded = load_checkpoint(args.checkpoint)
    model, config = loaded.model, loaded.config
    if not model.gmm.is_fitted:
        print(f"{args.checkpoint} has no fitted GMM")
        return 1
    settings, _ = reader_settings(loaded.extra.get("data"))
    reader = NuScenesReader(args.dataroot, args.version, args.split, **settings)
    keyframes = open_keyframes(reader, config, None, args.dataroot / CACHE_DIR_NAME, False)
    picks = np.unique(np.linspace(0, len(keyframes) - 1, args.frames).round()).astype(int)
    items = [keyframes[int(i)].inputs for i in picks]
    gmm, weight = model.gmm, config.weight_gmm
    params = [q for q in model.parameters() if q.requires_grad]
    terms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "raw -log p": lambda x: gmm.nll(x).mean(),
        "-log p / d": lambda x: (gmm.nll(x) / gmm.dim).mean(),
        "alignment_loss": lambda x: gmm.alignment_loss(x).mean(),
    }
    print(f"{len(items)} keyframes of {args.dataroot.name}; weight_gmm {weight}")
    print(f"{'frames':<14} {'term':<16} {'value':>10} {'|grad| x weight':>16}")
    model.train()
    for label, drop in (("clean", False), ("LiDAR dropped", True)):
        batch = [remove_modalities(x, [Modality.LIDAR]) if drop else x for x in items]
        inputs = {k: torch.from_numpy(np.concatenate([b[k] for b in batch])) for k in batch[0]}
        pooled = model.forward_with_embeddings(inputs)[1].pooled
        for name, term in terms.items():
            value = term(pooled)
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads if g is not None))
            print(f"{label:<14} {name:<16} {float(value.detach()):>10.3f} {weight * norm:>16.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
