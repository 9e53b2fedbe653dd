"""`peftdml results`: run summaries and the claims page are read from the files, verdicts follow
the numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.tools.results import collect_run, main, render


def _run_dir(path: Path, *, steps: int, trainable_percent: float, pairs: int | None) -> Path:
    path.mkdir(parents=True)
    data: dict[str, Any] = {"lidar_sweeps": 1}
    if pairs is not None:
        data["pairs"] = pairs
    config = {
        "stage": "pretrain",
        "args": {"batch_size": "4", "model_config": "x.json", "threads": "1",
                 "modality_dropout": "0.2", "sensor_dropout": "0.1"},
        "model_config": {"input_modalities": ["lidar"]},
        "parameters": {"total_params": 1000, "trainable_params": int(10 * trainable_percent),
                       "trainable_percent": trainable_percent},
        "data": data,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    rows = [{"step": s + 1, "step_s": 0.5, "peak_rss_mb": 100.0 + s} for s in range(steps)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vals = [{"step": 5, "train_s": 3.0, "NDS": 0.4}, {"step": steps, "train_s": 9.0, "NDS": 0.3}]
    (path / "val.jsonl").write_text("".join(json.dumps(v) + "\n" for v in vals))
    return path


def test_collect_reads_steps_wall_time_memory_and_best_validation(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run", steps=10, trainable_percent=8.0, pairs=20)
    summary = collect_run(run)
    assert summary["steps"] == 10
    assert summary["train_s"] == 9.0  # the loop's wall time as validation recorded it
    assert summary["peak_rss_mb"] == 109.0
    assert summary["best_val_nds"] == 0.4 and summary["best_step"] == 5
    assert summary["epochs"] == 2.0  # 20 pairs / batch 4 = 5 steps per epoch
    assert summary["epoch_s"] == 4.5
    assert summary["input_modalities"] == ["lidar"]
    assert "epochs" not in collect_run(_run_dir(tmp_path / "r2", steps=3, trainable_percent=1,
                                                pairs=None))  # fmt: skip
    assert collect_run(tmp_path / "r2", pairs=12)["epochs"] == 1.0


def test_collect_summarizes_the_live_alignment_loss(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run", steps=10, trainable_percent=8.0, pairs=20)
    assert "gmm_alignment" not in collect_run(run)  # the loss never went live
    # Live from step 5 on (0 before the first fit), falling as the features align.
    rows = [{"step": s, "step_s": 0.5, "loss/gmm": 0.0 if s < 5 else 2.0 / (s - 4)}
            for s in range(1, 11)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fits = [{"step": 4, "frames": 8}, {"step": 7, "frames": 8}, {"step": 10, "final": True}]
    (run / "gmm.jsonl").write_text("".join(json.dumps(f) + "\n" for f in fits))
    alignment = collect_run(run)["gmm_alignment"]
    assert alignment["first_live_step"] == 5 and alignment["live_steps"] == 6
    assert alignment["fit_steps"] == [4, 7]
    assert (
        alignment["loss_first_mean"]
        == alignment["loss_last_mean"]
        == round(sum(2.0 / k for k in range(1, 7)) / 6, 4)
    )  # six live steps: both windows of 100 hold all of them


def test_collect_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        collect_run(tmp_path)


def _evaluation(full: float, subsets: dict[str, float], degradations: dict[str, float]) -> Any:
    def run(nds: float) -> dict[str, float]:
        return {"NDS": nds, "mAP": nds + 0.1}

    return {
        "full": run(full),
        "dropout": {k: run(v) for k, v in subsets.items()},
        "degradation": {k: run(v) for k, v in degradations.items()},
    }


def test_render_writes_tables_pictures_and_verdicts_that_follow_the_numbers(
    tmp_path: Path,
) -> None:
    base = tmp_path / "results"
    base.mkdir()
    subsets = {"radar+camera+imu+gnss": 0.3, "lidar+camera+imu+gnss": 0.49,
               "lidar+radar+imu+gnss": 0.48, "lidar": 0.45, "-CAM_FRONT": 0.5,
               "-RADAR_FRONT": 0.5}  # fmt: skip
    files = {
        "ref": _evaluation(0.5, subsets, {"fog": 0.45, "rain": 0.30}),
        "peft": _evaluation(0.51, {}, {}),
        "ft": _evaluation(0.50, {}, {}),
        "gmm": _evaluation(0.5, {}, {"rain": 0.33, "blur": 0.405}),
        "plain": _evaluation(0.5, {}, {"rain": 0.31, "blur": 0.41}),
    }
    for key, data in files.items():
        (base / f"{key}.eval.json").write_text(json.dumps(data))
    (base / "peft.train.json").write_text(json.dumps({"steps": 10, "train_s": 60.0,
                                                      "trainable_params": 88,
                                                      "trainable_percent": 8.8}))  # fmt: skip
    spec = {
        "title": "Results",
        "reference": "ref",
        "variants": [
            {"key": k, "name": k.upper(), "eval": f"{k}.eval.json",
             **({"train": "peft.train.json"} if k == "peft" else {}),
             "commands": [f"peftdml eval --checkpoint {k}.pt"]}
            for k in files
        ],
        "peft_vs_finetune": {"peft": "peft", "finetune": "ft"},
        "gmm": {"gmm": "gmm", "plain": "plain", "seen": ["fog"], "held_out": ["rain", "blur"]},
    }  # fmt: skip
    (base / "variants.json").write_text(json.dumps(spec))
    out = tmp_path / "results.md"
    assert main(["render", "--spec", str(base / "variants.json"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "**met**: NDS 0.510 (PEFT, 8.80 % trained) against 0.500" in text
    # LiDAR removed keeps 0.6 of full NDS: the dropout claim is only partly met.
    assert "**partly met**: LiDAR removed 0.600 (missed)" in text
    assert "radars removed 0.980 (met)" in text
    assert "worst single camera (CAM_FRONT) 1.000 (met)" in text
    # rain keeps 0.6: the degradation claim is missed.
    assert "**missed**: retention fog 0.900, rain 0.600" in text
    # rain gains more than the 0.01 noise level, blur loses less than it: partly met.
    assert "**partly met**: NDS difference (GMM minus plain) rain +0.020, blur -0.005" in text
    assert "| PEFT | 0.510 | 0.610 | 88 (8.8 %) | 10 | 1.0 | n/a | not recorded |" in text
    assert "peftdml eval --checkpoint gmm.pt" in text
    # The GMM section: one row per degradation, with what training saw; n/a where not evaluated.
    assert "| rain | held out | 0.310 | 0.330 | +0.020 | 0.620 | 0.660 |" in text
    assert "| fog | seen | n/a | n/a | n/a | n/a | n/a |" in text
    assert "| clean | clean | 0.500 | 0.500 | +0.000 | 1.000 | 1.000 |" in text
    for picture in ("results_retention.png", "results_degradations.png", "results_gmm.png"):
        data = (tmp_path / "images" / picture).read_bytes()
        assert data.startswith(b"\x89PNG"), picture
        assert f"(images/{picture})" in text
    assert render(base / "variants.json", out) == text  # deterministic


def test_gmm_arms_over_seeds_show_the_mean_each_seed_and_the_noise(tmp_path: Path) -> None:
    base = tmp_path / "results"
    base.mkdir()
    files = {
        "gmm0": _evaluation(0.50, {}, {"night": 0.40, "rain": 0.33}),
        "gmm1": _evaluation(0.52, {}, {"night": 0.42, "rain": 0.30}),
        "plain0": _evaluation(0.50, {}, {"night": 0.41, "rain": 0.31}),
        "plain1": _evaluation(0.54, {}, {"night": 0.43, "rain": 0.31}),
    }
    for key, data in files.items():
        (base / f"{key}.eval.json").write_text(json.dumps(data))
    for key, auc in (("gmm0", 0.9), ("gmm1", 0.7), ("plain0", 0.5), ("plain1", 0.6)):
        cases = {"clean": {"auc": None}, "rain": {"auc": auc}}  # night: not evaluated
        (base / f"health_{key}.json").write_text(json.dumps({"cases": cases}))
    spec = {
        "variants": [{"key": k, "name": k, "eval": f"{k}.eval.json"} for k in files],
        "gmm": {"gmm": ["gmm0", "gmm1"], "plain": ["plain0", "plain1"], "seen": ["night"],
                "held_out": ["rain"], "note": "Two seeds per arm.",
                "health": {"gmm": ["health_gmm0.json", "health_gmm1.json"],
                           "plain": ["health_plain0.json", "health_plain1.json"]}},
    }  # fmt: skip
    (base / "variants.json").write_text(json.dumps(spec))
    text = render(base / "variants.json", tmp_path / "results.md")
    assert "Two seeds per arm." in text
    # rain: GMM +0.02 and -0.01 against its plain twin; the mean +0.005 is below the noise level.
    row = ("| rain | held out | 0.310 (0.310, 0.310) | 0.315 (0.330, 0.300) "
           "| +0.005 (+0.020, -0.010) |")  # fmt: skip
    assert row in text
    assert "## Retention when sensors drop out" not in text  # no arm was evaluated with dropout
    assert "**missed**: NDS difference (GMM minus plain) rain +0.005 (+0.020, -0.010)" in text
    assert "clean NDS differs by 0.040 between seeds" in text
    assert "| rain | held out | 0.550 (0.500, 0.600) | 0.800 (0.900, 0.700) |" in text
    assert "| night | seen | n/a | n/a |" in text
    spec["gmm"]["noise_nds"] = 0.004
    (base / "variants.json").write_text(json.dumps(spec))
    assert "**met**: NDS difference" in render(base / "variants.json", tmp_path / "results.md")
    assert (tmp_path / "images" / "results_gmm.png").read_bytes().startswith(b"\x89PNG")
    spec["gmm"]["plain"] = ["plain0"]
    (base / "variants.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="as many plain arms as GMM arms"):
        render(base / "variants.json", tmp_path / "results.md")


def test_health_section_reads_the_health_evaluation(tmp_path: Path) -> None:
    from peftdml_ros.tools.results import health_section

    data = {
        "meta": {"thresholds": [0.1, 1.0, 10.0]},
        "cases": {
            "clean": {"kind": "clean", "frames": 4, "auc": None, "median_percentile": 52.0,
                      "flagged_below": {"0.1": 0.0, "1": 0.0, "10": 0.25}},
            "fog": {"kind": "degradation", "frames": 4, "auc": 0.9375, "median_percentile": 3.5,
                    "flagged_below": {"0.1": 0.25, "1": 0.5, "10": 1.0}},
        },
    }  # fmt: skip
    path = tmp_path / "health.json"
    path.write_text(json.dumps(data))
    text = "\n".join(health_section(path, {"command": "peftdml health-eval ...", "note": "n"}))
    assert "| clean | clean | 4 | n/a | 52.0 | 0.000 | 0.000 | 0.250 |" in text
    assert "| fog | degradation | 4 | 0.938 | 3.5 | 0.250 | 0.500 | 1.000 |" in text
    assert "share below 10 |" in text and "`peftdml health-eval ...`" in text


def test_the_committed_results_page_is_what_render_writes_from_the_committed_files(
    tmp_path: Path,
) -> None:
    """Every number on docs/results.md comes from the files beside its spec: rendering them again
    gives the same page (only the regenerate line names other paths)."""
    repo = Path(__file__).resolve().parents[2]
    committed = (repo / "docs" / "results.md").read_text().splitlines()
    fresh = render(repo / "docs" / "results" / "variants.json", tmp_path / "results.md")

    def without_regenerate_line(lines: list[str]) -> list[str]:
        return [line for line in lines if not line.startswith("Regenerate this page:")]

    assert without_regenerate_line(fresh.splitlines()) == without_regenerate_line(committed), (
        "docs/results.md is stale: run `peftdml results render --spec docs/results/variants.json "
        "--out docs/results.md`"
    )
