"""`peftdml info`: a model's configuration and parameter report (total, trainable, per module).

Trainable counts are those of PEFT mode (frozen backbones; LoRA, adapters, projections, fusion
and head trainable) unless --full is given. Without --checkpoint the default config is reported.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftdml info", description="Print a model's configuration and parameter report."
    )
    parser.add_argument("--checkpoint", type=Path, help="a .pt checkpoint (default: new model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--full", action="store_true", help="count as full fine-tuning (nothing frozen)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from peftdml_ros.core.model import (
        ModelConfig,
        build_model,
        freeze_backbones,
        load_checkpoint,
        parameter_report,
        unfreeze_all,
    )

    if args.checkpoint is not None:
        loaded = load_checkpoint(args.checkpoint)
        model, config, source = loaded.model, loaded.config, str(args.checkpoint)
    else:
        config = ModelConfig()
        model, source = build_model(config), "default config (untrained)"
    if args.full:
        unfreeze_all(model)
    else:
        freeze_backbones(model)
    report = parameter_report(model)
    mode = "full" if args.full else "peft"
    if args.json:
        payload = {"source": source, "mode": mode, **report.to_dict()}
        payload["model_config"] = config.to_dict()
        payload["gmm_fitted"] = model.gmm.is_fitted
        print(json.dumps(payload, indent=2))
        return 0
    height, width = config.grid_hw
    print(f"model: {source}")
    print(
        f"BEV grid {height} x {width} cells of {config.cell_m} m, range "
        f"{config.point_cloud_range_m}; fusion grid {config.fusion_hw[0]} x {config.fusion_hw[1]}"
    )
    print(
        f"inputs: {config.max_lidar_points} LiDAR points, {config.max_radar_points} radar points, "
        f"{config.num_cameras} cameras of {config.image_size_hw[0]} x {config.image_size_hw[1]} px"
    )
    print(f"embedding d={config.embed_dim}, GMM fitted: {model.gmm.is_fitted}, mode: {mode}")
    print(report.format_table())
    return 0
