"""`peftdml train` with the clean-feature GMM live during training: held-out keyframes never in a
training pair, the alignment loss on after the first fit, refits, resume, and the health
calibration stored at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.health import CALIBRATION_KEY, HealthCalibration
from peftdml_ros.core.model import load_checkpoint
from peftdml_ros.data.synth import VERSION, generate_dataset
from peftdml_ros.data.synth.generate import ALL_SPLIT
from peftdml_ros.tools.cli import main as peftdml
from peftdml_ros.tools.train import (
    GMM_HOLDOUT_NAME,
    GMM_LOG_NAME,
    GmmRefits,
    holdout_indices,
    spread_indices,
    training_pairs,
)

HOLDOUT = 3
STEPS = 8


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two scenes of the small preset: 10 keyframes, 8 (t, t+1) pairs before the hold-out.
    return generate_dataset(
        tmp_path_factory.mktemp("synth"), scenes=2, seed=5, preset="small", progress=False
    )


def _train_args(dataroot: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--data", str(dataroot), "--version", VERSION, "--split", ALL_SPLIT,
            "--out", str(out), "--batch-size", "2", "--lr", "5e-3", "--tiny", "--quiet",
            "--modality-dropout", "0.3", "--sensor-dropout", "0", "--no-augment",
            "--cache-dir", str(out.parent / "cache"), "--seed", "3", "--device", "cpu",
            *more]  # fmt: skip


def _rows(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def live_run(dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "live"
    code = peftdml(_train_args(
        dataroot, out, "--steps", str(STEPS), "--ckpt-every", "4",
        "--gmm-holdout-frames", str(HOLDOUT), "--gmm-start-frac", "0.25",
        "--gmm-refit-every", "3", "--val-data", str(dataroot), "--val-every", "100",
    ))  # fmt: skip
    assert code == 0
    return out


def test_held_out_keyframes_are_in_no_training_pair(live_run: Path, dataroot: Path) -> None:
    from peftdml_ros.data.cache import CachedKeyframes

    held = json.loads((live_run / GMM_HOLDOUT_NAME).read_text())
    assert held["indices"] == holdout_indices(10, HOLDOUT, 3) and len(held["indices"]) == HOLDOUT
    cache = next((live_run.parent / "cache").glob("*/manifest.json")).parent
    keyframes = CachedKeyframes(cache)
    assert [keyframes.sample_tokens[i] for i in held["indices"]] == held["sample_tokens"]
    pairs = training_pairs(keyframes, held["indices"]).pairs
    assert pairs, "no training pair left"
    used = {index for pair in pairs for index in pair}
    assert not used & set(held["indices"])
    # Every pair that avoids the held-out frames is still trained on.
    everything = training_pairs(keyframes, []).pairs
    assert pairs == [p for p in everything if not set(p) & set(held["indices"])]


def test_alignment_loss_is_zero_before_the_first_fit_and_live_after(live_run: Path) -> None:
    rows = _rows(live_run / "metrics.jsonl")
    fits = _rows(live_run / GMM_LOG_NAME)
    live = [f for f in fits if not f.get("final")]
    # First fit once 25 % of 8 steps are done (before step 3), then at steps 3 and 6.
    assert [f["step"] for f in live] == [2, 3, 6]
    assert all(f["frames"] == HOLDOUT for f in fits)
    assert fits[-1].get("final") and fits[-1]["step"] == STEPS
    for row in rows:
        gmm = row["loss/gmm"]
        if row["step"] <= 2:  # steps 1 and 2 ran before the first fit
            assert gmm == 0.0
        else:
            assert 0.0 < gmm < 20.0, row  # log(1 + excess nats per dimension): bounded
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows)


def test_checkpoint_keeps_the_gmm_and_a_calibration(live_run: Path) -> None:
    loaded = load_checkpoint(live_run / "checkpoint.pt")
    assert loaded.model.gmm.is_fitted
    calibration = HealthCalibration.from_dict(loaded.extra[CALIBRATION_KEY])
    assert calibration.frames == 10 and len(calibration.quantiles) == 101
    assert (
        calibration.dataset["split"] == ALL_SPLIT and "sample_tokens_sha256" in calibration.dataset
    )
    best = load_checkpoint(live_run / "best.pt")
    assert best.model.gmm.is_fitted and CALIBRATION_KEY in best.extra


def test_resume_restores_the_fitted_gmm_and_keeps_the_cadence(
    dataroot: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    common = ("--gmm-holdout-frames", str(HOLDOUT), "--gmm-start-frac", "0.25",
              "--gmm-refit-every", "3", "--gmm-frames", "0")  # fmt: skip
    assert peftdml(_train_args(dataroot, out, "--steps", "4", *common)) == 0
    assert load_checkpoint(out / "checkpoint.pt").model.gmm.is_fitted  # buffers: state dict
    assert peftdml(_train_args(dataroot, out, "--steps", "7", "--resume", *common)) == 0
    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert rows[0]["loss/gmm"] == 0.0 and rows[1]["loss/gmm"] > 0.0  # first fit after step 1
    assert rows[4]["loss/gmm"] > 0.0  # step 5, the first after resuming: live at once
    fits = [f["step"] for f in _rows(out / GMM_LOG_NAME) if not f.get("final")]
    assert fits == [1, 3, 6]  # no second "first fit" after resuming; refits every 3 steps


def test_gmm_helpers_and_refusals(dataroot: Path, tmp_path: Path) -> None:
    assert spread_indices(10, 4) == [0, 3, 6, 9] and spread_indices(3, 10) == [0, 1, 2]
    assert holdout_indices(10, 3, 1) == holdout_indices(10, 3, 1) != holdout_indices(10, 3, 2)
    with pytest.raises(ConfigError, match="nothing to train"):
        holdout_indices(5, 5, 0)
    refits = GmmRefits((0, 1), start_frac=0.5, every=4)
    assert not refits.due(3, 0.49, fitted=False) and refits.due(3, 0.5, fitted=True) is False
    assert refits.due(4, 0.5, fitted=True) and refits.due(5, 0.5, fitted=False)
    assert not GmmRefits((0,), 0.5, 0).due(8, 0.9, fitted=True)
    for bad in (("--gmm-start-frac", "0.5"),  # no held-out frames to fit on
                ("--gmm-refit-every", "2"),  # refits without a first fit
                ("--gmm-holdout-frames", "1", "--gmm-start-frac", "1.5")):  # fmt: skip
        assert peftdml(_train_args(dataroot, tmp_path / "bad", "--steps", "1", *bad)) == 1


def test_held_out_keyframes_can_be_drawn_from_named_scenes_only() -> None:
    from peftdml_ros.tools.train import holdout_candidates

    class Scenes:
        def scene_names(self) -> list[str]:
            return ["scene-0001"] * 4 + ["scene-0002"] * 4 + ["scene-0003"] * 4

    candidates = holdout_candidates(Scenes(), ["scene-0002"])  # type: ignore[arg-type]
    assert candidates == [4, 5, 6, 7]
    assert set(holdout_indices(12, 3, 0, candidates)) <= {4, 5, 6, 7}
    assert holdout_candidates(Scenes(), None) is None  # type: ignore[arg-type]
    assert holdout_indices(12, 3, 0, None) == holdout_indices(12, 3, 0)
    with pytest.raises(ConfigError, match="does not hold"):
        holdout_candidates(Scenes(), ["scene-0009"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hold out fewer or name more scenes"):
        holdout_indices(12, 5, 0, candidates)
