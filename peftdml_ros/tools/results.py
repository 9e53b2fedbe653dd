"""`peftdml results`: the page that measures the method's claims, built from result files.

    peftdml results collect --run runs/b/lidar_only --out docs/results/lidar_only.train.json
    peftdml results render --spec docs/results/variants.json --out docs/results.md

`collect` summarizes one `peftdml train` run directory (steps, wall time, time per epoch, peak
memory, trainable parameters, best validation score) into a small JSON that can be committed;
the checkpoints themselves stay out of the repository. `render` reads a spec listing the
variants (each with its `peftdml eval --json` output, its training summary and the commands that
made them) and writes the Markdown page with tables and pictures. Every number on the page is
read from those files, and each table names the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftdml_ros.core.errors import ConfigError

# Retention columns of the summary table: (label, eval dropout key). "-" keys remove one sensor.
_SUMMARY_SUBSETS: tuple[tuple[str, str], ...] = (
    ("LiDAR removed", "radar+camera+imu+gnss"),
    ("radars removed", "lidar+camera+imu+gnss"),
    ("cameras removed", "lidar+radar+imu+gnss"),
    ("LiDAR only", "lidar"),
    ("camera only", "camera"),
    ("radar only", "radar"),
)
# The paper's robustness claim: more than 85 % of full-sensor accuracy under dropout.
_RETENTION_CLAIM = 0.85
# Run-to-run noise of NDS with one seed per arm, below which a difference is not a gain.
_NOISE_NDS = 0.01
# The paper's efficiency claim: under 10 % of the parameters trained.
_TRAINABLE_CLAIM_PERCENT = 10.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="peftdml results", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="summarize a `peftdml train` run directory")
    c.add_argument("--run", type=Path, required=True, help="the run directory (--out of train)")
    c.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    c.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="training pairs per epoch, for runs whose config.json does not record it",
    )
    r = sub.add_parser("render", help="write the results page from a spec")
    r.add_argument("--spec", type=Path, required=True, help="variants.json (see docs/results.md)")
    r.add_argument("--out", type=Path, required=True, help="the Markdown page to write")
    r.add_argument(
        "--images", type=Path, default=None, help="picture directory (default: <out dir>/images)"
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- collect


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect_run(run: Path, pairs: int | None = None) -> dict[str, Any]:
    """The summary of one training run directory (see the module docstring)."""
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run} has no config.json: pass the --out directory of `peftdml train`")
    config = json.loads(config_path.read_text())
    steps = _read_jsonl(run / "metrics.jsonl")
    if not steps:
        raise ConfigError(f"{run}/metrics.jsonl is empty: the run has not made a step yet")
    validations = _read_jsonl(run / "val.jsonl")
    args = config.get("args", {})
    batch = int(args.get("batch_size", 1))
    pairs = pairs if pairs is not None else config.get("data", {}).get("pairs")
    # The wall time of the loop (steps and validations) as train records it; else the steps'.
    step_s = sum(float(row["step_s"]) for row in steps)
    train_s = float(validations[-1]["train_s"]) if validations else step_s
    rss = [float(row["peak_rss_mb"]) for row in steps if "peak_rss_mb" in row]
    best = max(validations, key=lambda row: float(row["NDS"])) if validations else None
    params = config.get("parameters", {})
    summary: dict[str, Any] = {
        "run": run.name,
        "stage": config.get("stage"),
        "model_config": args.get("model_config"),
        "input_modalities": config.get("model_config", {}).get("input_modalities"),
        "modality_dropout": _number_or_none(args.get("modality_dropout")),
        "sensor_dropout": _number_or_none(args.get("sensor_dropout")),
        "threads": _number_or_none(args.get("threads")),
        "steps": int(steps[-1]["step"]),
        "batch_size": batch,
        "train_s": round(train_s, 1),
        "step_s_mean": round(step_s / len(steps), 4),
        "peak_rss_mb": max(rss) if rss else None,
        "total_params": params.get("total_params"),
        "trainable_params": params.get("trainable_params"),
        "trainable_percent": params.get("trainable_percent"),
        "best_val_nds": float(best["NDS"]) if best else None,
        "best_step": int(best["step"]) if best else None,
        "pairs_per_epoch": pairs,
    }
    alignment = _alignment_summary(steps, _read_jsonl(run / "gmm.jsonl"))
    if alignment:
        summary["gmm_alignment"] = alignment
    if pairs:
        steps_per_epoch = math.ceil(int(pairs) / batch)
        summary["epochs"] = round(summary["steps"] / steps_per_epoch, 2)
        summary["epoch_s"] = round(train_s / summary["epochs"], 1)
    return summary


def _alignment_summary(
    steps: Sequence[Mapping[str, Any]], fits: Sequence[Mapping[str, Any]], window: int = 100
) -> dict[str, Any] | None:
    """When the GMM alignment loss was live: its first step, its mean over the first and the
    last `window` live steps (unweighted), and the steps of the GMM fits made during the run."""
    live = [row for row in steps if float(row.get("loss/gmm", 0.0)) > 0.0]
    if not live:
        return None
    first, last = live[:window], live[-window:]
    return {
        "first_live_step": int(live[0]["step"]),
        "live_steps": len(live),
        "loss_first_mean": round(math.fsum(float(r["loss/gmm"]) for r in first) / len(first), 4),
        "loss_last_mean": round(math.fsum(float(r["loss/gmm"]) for r in last) / len(last), 4),
        "window_steps": window,
        "fit_steps": [int(f["step"]) for f in fits if not f.get("final")],
    }


def _number_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------- render


@dataclass(frozen=True)
class Variant:
    """One trained model on the page: its name, evaluation and training summary."""

    key: str
    name: str
    evaluation: dict[str, Any]
    train: dict[str, Any] | None
    commands: tuple[str, ...]

    @property
    def full_nds(self) -> float:
        return float(self.evaluation["full"]["NDS"])

    def dropout_nds(self, key: str) -> float | None:
        run = self.evaluation.get("dropout", {}).get(key)
        return None if run is None else float(run["NDS"])

    def retention(self, key: str) -> float | None:
        nds = self.dropout_nds(key)
        return None if nds is None or self.full_nds <= 0 else nds / self.full_nds


def load_spec(spec_path: Path) -> tuple[dict[str, Any], list[Variant]]:
    """The spec JSON and its variants, with every file read relative to the spec."""
    spec = json.loads(spec_path.read_text())
    base = spec_path.parent
    variants = []
    for entry in spec["variants"]:
        train = entry.get("train")
        summary = json.loads((base / train).read_text()) if train else None
        if summary is not None and entry.get("memory"):
            # Peak memory measured by a separate short run of the same stage and model.
            memory = json.loads((base / entry["memory"]).read_text())
            summary["peak_rss_mb"] = memory["peak_rss_mb"]
        variants.append(
            Variant(
                key=entry["key"],
                name=entry["name"],
                evaluation=json.loads((base / entry["eval"]).read_text()),
                train=summary,
                commands=tuple(entry.get("commands", ())),
            )
        )
    keys = [v.key for v in variants]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{spec_path}: variant keys must be unique, got {keys}")
    return spec, variants


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _train_cells(train: Mapping[str, Any] | None) -> list[str]:
    if train is None:
        return ["n/a"] * 5
    trainable = train.get("trainable_params")
    percent = train.get("trainable_percent")
    params = "n/a" if trainable is None else f"{trainable:,} ({percent:.1f} %)"
    rss = train.get("peak_rss_mb")
    return [
        params,
        str(train["steps"]),
        f"{train['train_s'] / 60:.1f}",
        _fmt(train.get("epoch_s"), 1),
        "not recorded" if rss is None else f"{rss:,.0f}",
    ]


def baseline_table(variants: Sequence[Variant]) -> list[str]:
    header = ["variant", "NDS", "mAP", "trainable parameters", "steps", "train wall min",
              "wall s per epoch", "peak RSS MB"]  # fmt: skip
    rows = [
        [
            v.name,
            _fmt(v.full_nds),
            _fmt(float(v.evaluation["full"]["mAP"])),
            *_train_cells(v.train),
        ]
        for v in variants
    ]
    return _table(header, rows)


def _worst_single(variant: Variant, prefix: str) -> tuple[str, float] | None:
    singles = [
        (key[1:], r)
        for key in variant.evaluation.get("dropout", {})
        if key.startswith("-" + prefix) and (r := variant.retention(key)) is not None
    ]
    return min(singles, key=lambda item: item[1]) if singles else None


def retention_table(variants: Sequence[Variant]) -> list[str]:
    header = ["variant", "full NDS", *[label for label, _ in _SUMMARY_SUBSETS],
              "worst single camera", "worst single radar"]  # fmt: skip
    rows = []
    for v in variants:
        cells = [v.name, _fmt(v.full_nds)]
        cells += [_fmt(v.retention(key)) for _, key in _SUMMARY_SUBSETS]
        for prefix in ("CAM", "RADAR"):
            worst = _worst_single(v, prefix)
            cells.append("n/a" if worst is None else f"{worst[1]:.3f} ({worst[0]})")
        rows.append(cells)
    return _table(header, rows)


def degradation_table(variants: Sequence[Variant]) -> tuple[list[str], list[str]]:
    """NDS per degradation for every variant evaluated on degradations; and their names."""
    names: list[str] = []
    for v in variants:
        for name in v.evaluation.get("degradation", {}):
            if name not in names:
                names.append(name)
    with_degradations = [v for v in variants if v.evaluation.get("degradation")]
    rows = []
    for v in with_degradations:
        runs = v.evaluation["degradation"]
        rows.append(
            [v.name, _fmt(v.full_nds)]
            + [_fmt(float(runs[n]["NDS"])) if n in runs else "n/a" for n in names]
        )
    return _table(["variant", "clean", *names], rows), names


# --------------------------------------------------------------------------------- pictures


def _save_figure(figure: Any, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure of this page."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_retention_heatmap(path: Path, variants: Sequence[Variant]) -> Path:
    """Rows: variants; columns: every modality subset and single sensor removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns: list[str] = []
    for v in variants:
        for key in v.evaluation.get("dropout", {}):
            if key not in columns:
                columns.append(key)
    values = np.full((len(variants), len(columns)), np.nan)
    for row, v in enumerate(variants):
        for col, key in enumerate(columns):
            r = v.retention(key)
            if r is not None:
                values[row, col] = r
    figure, axes = plt.subplots(figsize=(0.42 * len(columns) + 3.5, 0.5 * len(variants) + 2.6))
    image = axes.imshow(values, vmin=0.0, vmax=1.1, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(variants)), [v.name for v in variants], fontsize=8)
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            if not np.isnan(values[row, col]):
                shade = "black" if values[row, col] > 0.6 else "white"
                axes.text(col, row, f"{values[row, col]:.2f}", ha="center", va="center",
                          fontsize=5.5, color=shade)  # fmt: skip
    figure.colorbar(image, ax=axes, fraction=0.02, label="NDS / own full-sensor NDS")
    axes.set_title("Retention per sensor subset (columns: modalities present, or -SENSOR removed)")
    return _save_figure(figure, path)


def plot_degradations(path: Path, variants: Sequence[Variant], names: Sequence[str]) -> Path:
    """Grouped bars: NDS per degradation (and clean) for each variant with degradations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [v for v in variants if v.evaluation.get("degradation")]
    groups = ["clean", *names]
    width = 0.8 / max(len(shown), 1)
    figure, axes = plt.subplots(figsize=(1.3 * len(groups) + 2, 4.2))
    for index, v in enumerate(shown):
        runs = v.evaluation["degradation"]
        heights = [v.full_nds] + [float(runs[n]["NDS"]) if n in runs else np.nan for n in names]
        axes.bar(np.arange(len(groups)) + index * width, heights, width, label=v.name)
    axes.set_xticks(np.arange(len(groups)) + width * (len(shown) - 1) / 2, groups)
    axes.set_ylabel("NDS (official nuScenes metrics)")
    axes.set_ylim(0.0, 1.0)
    axes.legend(fontsize=8)
    axes.set_title("NDS per generated degradation")
    return _save_figure(figure, path)


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, or None when there is no value or any is missing."""
    known = [v for v in values if v is not None]
    return math.fsum(known) / len(known) if known and len(known) == len(values) else None


def _gmm_arms(
    spec: Mapping[str, Any], by_key: Mapping[str, Variant]
) -> tuple[list[Variant], list[Variant]] | None:
    """The GMM and plain arms (one variant per seed, paired by position), if both are listed."""
    gmm = spec.get("gmm")
    if not gmm:
        return None
    keys = {arm: [gmm[arm]] if isinstance(gmm.get(arm), str) else list(gmm.get(arm) or [])
            for arm in ("gmm", "plain")}  # fmt: skip
    if not keys["gmm"] or len(keys["gmm"]) != len(keys["plain"]):
        raise ConfigError("spec 'gmm': list as many plain arms as GMM arms, paired by seed")
    if not all(k in by_key for k in keys["gmm"] + keys["plain"]):
        return None
    return [by_key[k] for k in keys["gmm"]], [by_key[k] for k in keys["plain"]]


def _arm_nds(variant: Variant, name: str) -> float | None:
    """NDS of one arm on clean data ("clean") or under one degradation."""
    if name == "clean":
        return variant.full_nds
    run = variant.evaluation.get("degradation", {}).get(name)
    return None if run is None else float(run["NDS"])


def _per_seed(values: Sequence[float | None], signed: bool = False) -> str:
    """The mean over seeds and each seed, e.g. "0.512 (0.508, 0.516)"; one seed: the value."""
    mean = _mean(values)
    if mean is None:
        return "n/a"
    form = "{:+.3f}" if signed else "{:.3f}"
    text = form.format(mean)
    if len(values) > 1:
        text += " (" + ", ".join(form.format(v) for v in values) + ")"
    return text


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _gmm_noise(spec: Mapping[str, Any]) -> float:
    return float(spec["gmm"].get("noise_nds", _NOISE_NDS))


def plot_gmm_differences(
    path: Path,
    with_gmm: Sequence[Variant],
    plain: Sequence[Variant],
    seen: Sequence[str],
    held_out: Sequence[str],
    noise: float,
) -> Path:
    """GMM minus plain NDS per degradation: a bar per seed, the noise band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ["clean", *seen, *held_out]
    width = 0.8 / max(len(plain), 1)
    figure, axes = plt.subplots(figsize=(1.2 * len(names) + 2, 4.0))
    axes.axhspan(-noise, noise, color="0.85", label=f"run-to-run noise (±{noise:.3f})")
    if held_out:
        first = 1 + len(seen)
        axes.axvspan(first - 0.5, len(names) - 0.5, color="tab:blue", alpha=0.07,
                     label="held out of training")  # fmt: skip
    for seed, (g, p) in enumerate(zip(with_gmm, plain, strict=True)):
        differences = [_difference(_arm_nds(g, n), _arm_nds(p, n)) for n in names]
        values = [np.nan if d is None else d for d in differences]
        offset = (seed - (len(plain) - 1) / 2) * width
        axes.bar(np.arange(len(names)) + offset, values, width, label=f"{g.name} minus plain")
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(np.arange(len(names)), names)
    axes.set_ylabel("NDS difference, GMM minus plain")
    limit = max(3 * noise, 0.02)
    axes.set_ylim(-limit, limit)
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title("Live GMM alignment against the same run without it")
    return _save_figure(figure, path)


def _gmm_health_table(
    spec: Mapping[str, Any], base: Path, seen: Sequence[str], held_out: Sequence[str]
) -> list[str]:
    """ROC AUC of each arm's normality score, clean against degraded (`peftdml health-eval`)."""
    health = spec["gmm"].get("health")
    if not health:
        return []

    def aucs(files: Sequence[str], name: str) -> list[float | None]:
        values = []
        for file in files:
            case = json.loads((base / file).read_text())["cases"].get(name)
            values.append(None if case is None or case.get("auc") is None else float(case["auc"]))
        return values

    rows = []
    for name, role in [*((n, "seen") for n in seen), *((n, "held out") for n in held_out)]:
        a, b = aucs(health["plain"], name), aucs(health["gmm"], name)
        rows.append([name, role, _per_seed(a), _per_seed(b)])
    seeds = len(health["plain"])
    label = f"mean over {seeds} seeds (each seed)" if seeds > 1 else "one seed"
    lines = [health.get("note", "").strip(), ""] if health.get("note") else []
    return [
        *lines,
        *_table(["degradation", "in training", f"AUC plain, {label}", "AUC GMM"], rows),
        "",
    ]


def gmm_section(
    spec: Mapping[str, Any],
    by_key: Mapping[str, Variant],
    images: Path,
    rel: Path,
    base: Path,
) -> list[str]:
    """The GMM arms against the plain arms, per degradation seen in training or held out."""
    arms = _gmm_arms(spec, by_key)
    if arms is None:
        return []
    with_gmm, plain = arms
    seen, held_out = list(spec["gmm"].get("seen", [])), list(spec["gmm"].get("held_out", []))
    clean_gmm = _mean([v.full_nds for v in with_gmm])
    clean_plain = _mean([v.full_nds for v in plain])
    rows = []
    for name, role in [("clean", "clean"), *((n, "seen") for n in seen),
                       *((n, "held out") for n in held_out)]:  # fmt: skip
        a = [_arm_nds(v, name) for v in plain]
        b = [_arm_nds(v, name) for v in with_gmm]
        differences = [_difference(y, x) for x, y in zip(a, b, strict=True)]
        rows.append([
            name, role, _per_seed(a), _per_seed(b), _per_seed(differences, signed=True),
            _fmt(_ratio(_mean(a), clean_plain)), _fmt(_ratio(_mean(b), clean_gmm)),
        ])  # fmt: skip
    seeds = f"mean over {len(plain)} seeds (each seed)" if len(plain) > 1 else "one seed"
    header = ["degradation", "in training", f"NDS plain, {seeds}", "NDS GMM",
              "GMM minus plain", "retention plain", "retention GMM"]  # fmt: skip
    lines = ["## The clean-data GMM on degradations left out of training", ""]
    note = spec["gmm"].get("note", "")
    lines += [note.strip(), ""] if note else []
    lines += [*_table(header, rows), ""]
    lines += _gmm_health_table(spec, base, seen, held_out)
    picture = plot_gmm_differences(
        images / "results_gmm.png", with_gmm, plain, seen, held_out, _gmm_noise(spec)
    )
    lines += [f"![GMM minus plain per degradation]({rel / picture.name})", ""]
    return lines


def health_section(path: Path, health: Mapping[str, Any]) -> list[str]:
    """The sensor-health score's separation of clean and bad frames (`peftdml health-eval`)."""
    data = json.loads(path.read_text())
    thresholds = [f"{float(t):g}" for t in data["meta"]["thresholds"]]
    rows = []
    for name, case in data["cases"].items():
        flagged = case.get("flagged_below", {})
        rows.append(
            [name, case["kind"], str(case["frames"]), _fmt(case.get("auc")),
             _fmt(case.get("median_percentile"), 1),
             *[_fmt(flagged.get(t)) for t in thresholds]]
        )  # fmt: skip
    header = ["case", "kind", "frames", "ROC AUC vs clean", "median percentile",
              *[f"share below {t}" for t in thresholds]]  # fmt: skip
    lines = ["## Sensor-health score", "", health.get("note", "").strip(), ""]
    lines += [f"`{health['command']}`", ""] if health.get("command") else []
    lines += [*_table(header, rows), ""]
    if health.get("picture"):
        lines += [f"![normality score, clean and degraded]({health['picture']})", ""]
    return lines


# ----------------------------------------------------------------------------------- claims


def _peft_claim(spec: Mapping[str, Any], by_key: Mapping[str, Variant]) -> list[str]:
    pair = spec.get("peft_vs_finetune")
    if not pair or pair["peft"] not in by_key or pair["finetune"] not in by_key:
        return ["- PEFT at or above full fine-tuning with < 10 % trained: **not measured**."]
    peft, full = by_key[pair["peft"]], by_key[pair["finetune"]]
    percent = (peft.train or {}).get("trainable_percent")
    small = percent is not None and float(percent) < _TRAINABLE_CLAIM_PERCENT
    met = small and peft.full_nds >= full.full_nds
    verdict = "met" if met else "missed"
    gap_points = 100.0 * (full.full_nds - peft.full_nds)
    noise = (
        f" ({gap_points:.1f} NDS points below: within run-to-run noise)"
        if small and 0.0 < gap_points < 1.0
        else ""
    )
    return [
        f"- PEFT at or above full fine-tuning with under {_TRAINABLE_CLAIM_PERCENT:.0f} % of the "
        f"parameters trained: **{verdict}**: NDS {peft.full_nds:.3f} (PEFT, {_fmt(percent, 2)} % "
        f"trained) against {full.full_nds:.3f} (full fine-tuning), same data and budget{noise}."
    ]


def _dropout_claim(reference: Variant) -> list[str]:
    lines = []
    for label, key in _SUMMARY_SUBSETS[:3]:
        r = reference.retention(key)
        if r is None:
            continue
        verdict = "met" if r > _RETENTION_CLAIM else "missed"
        lines.append(f"{label} {r:.3f} ({verdict})")
    for prefix, label in (("CAM", "camera"), ("RADAR", "radar")):
        worst = _worst_single(reference, prefix)
        if worst is not None:
            verdict = "met" if worst[1] > _RETENTION_CLAIM else "missed"
            lines.append(f"worst single {label} ({worst[0]}) {worst[1]:.3f} ({verdict})")
    if not lines:
        return ["- More than 85 % of full-sensor accuracy under dropout: **not measured**."]
    verdicts = {"met" in item for item in lines}
    overall = "met" if verdicts == {True} else ("missed" if verdicts == {False} else "partly met")
    return [
        f"- More than {_RETENTION_CLAIM:.0%} of full-sensor NDS when sensors drop out "
        f"({reference.name}): **{overall}**: " + "; ".join(lines) + "."
    ]


def _degradation_claim(reference: Variant) -> list[str]:
    runs = reference.evaluation.get("degradation", {})
    if not runs:
        return ["- Robust across weather and degradations: **not measured**."]
    parts = [f"{name} {float(run['NDS']) / reference.full_nds:.3f}" for name, run in runs.items()]
    worst = min(float(run["NDS"]) for run in runs.values()) / reference.full_nds
    verdict = "met" if worst > _RETENTION_CLAIM else "missed"
    return [
        f"- Robust across weather and degradations, read as more than {_RETENTION_CLAIM:.0%} "
        f"of clean NDS under each ({reference.name}): **{verdict}**: retention "
        + ", ".join(parts)
        + "."
    ]


def _gmm_claim(spec: Mapping[str, Any], by_key: Mapping[str, Variant]) -> list[str]:
    arms = _gmm_arms(spec, by_key)
    if arms is None:
        return ["- The clean-data GMM helps on degradations not seen in training: **not "
                "measured**."]  # fmt: skip
    with_gmm, plain = arms
    diffs: list[tuple[str, list[float]]] = []
    for name in spec["gmm"].get("held_out", []):
        per_seed = [(_arm_nds(g, name), _arm_nds(p, name))
                    for g, p in zip(with_gmm, plain, strict=True)]  # fmt: skip
        if all(a is not None and b is not None for a, b in per_seed):
            diffs.append((name, [a - b for a, b in per_seed]))  # type: ignore[operator]
    if not diffs:
        return ["- The clean-data GMM helps on unseen degradations: **not measured**."]
    # A gain counts only above the noise level: one seed per arm moves NDS by about 0.01.
    noise = _gmm_noise(spec)
    gains = sum(math.fsum(d) / len(d) > noise for _, d in diffs)
    verdict = "met" if gains == len(diffs) else ("missed" if gains == 0 else "partly met")
    detail = ", ".join(f"{name} {_per_seed(d, signed=True)}" for name, d in diffs)
    seeds = f"mean over {len(plain)} seeds (each seed)" if len(plain) > 1 else "one seed per arm"
    text = (f"- The clean-data GMM helps on degradations left out of training: **{verdict}**: "
            f"NDS difference (GMM minus plain) {detail}; {seeds}; a gain counts above "
            f"{noise:.3f} NDS, the run-to-run noise")  # fmt: skip
    if len(plain) > 1:
        spread = _spread([v.full_nds for v in plain])
        text += f" (the plain arms' clean NDS differs by {spread:.3f} between seeds)"
    return [text + "."]


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values)


# ------------------------------------------------------------------------------------- page


def render(spec_path: Path, out: Path, images: Path | None = None) -> str:
    """Write the results page and its pictures; return the Markdown."""
    spec, variants = load_spec(spec_path)
    by_key = {v.key: v for v in variants}
    reference = by_key[spec.get("reference", variants[0].key)]
    images = images or out.parent / "images"
    rel = images.relative_to(out.parent) if images.is_relative_to(out.parent) else images
    lines = [f"# {spec.get('title', 'Results')}", ""]
    lines += [spec.get("intro", "").strip(), ""] if spec.get("intro") else []
    command = f"peftdml results render --spec {spec_path} --out {out}"
    lines += [f"Regenerate this page: `{command}`.", ""]

    lines += ["## What the paper claims, and what we measured", ""]
    lines += _peft_claim(spec, by_key) + _dropout_claim(reference)
    lines += _degradation_claim(reference) + _gmm_claim(spec, by_key)
    lines += [f"- {text}" for text in spec.get("extra_claims", [])]
    lines += [""]

    lines += ["## Baselines: same data, frame rule, augmentation and budget", ""]
    lines += [spec.get("baselines_note", "").strip(), ""] if spec.get("baselines_note") else []
    lines += [*baseline_table(variants), ""]
    with_dropout = [v for v in variants if v.evaluation.get("dropout")]
    if with_dropout:
        lines += ["## Retention when sensors drop out", ""]
        lines += ["NDS of each subset divided by the same model's full-sensor NDS.", ""]
        lines += [*retention_table(with_dropout), ""]
        heatmap = plot_retention_heatmap(images / "results_retention.png", with_dropout)
        lines += [f"![retention heat map]({rel / heatmap.name})", ""]

    table, names = degradation_table(variants)
    if names:
        lines += ["## NDS per degradation", ""]
        lines += (
            [spec.get("degradation_note", "").strip(), ""] if spec.get("degradation_note") else []
        )
        lines += [*table, ""]
        bars = plot_degradations(images / "results_degradations.png", variants, names)
        lines += [f"![NDS per degradation]({rel / bars.name})", ""]

    lines += gmm_section(spec, by_key, images, rel, spec_path.parent)

    health = spec.get("health")
    if health:
        lines += health_section(spec_path.parent / health["json"], health)

    for section in spec.get("sections", []):
        lines += [f"## {section['title']}", "", section["body"].strip(), ""]

    lines += ["## Commands", ""]
    for v in variants:
        if v.commands:
            lines += [f"**{v.name}**", "", "```bash", *v.commands, "```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "collect":
        summary = collect_run(args.run, args.pairs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary))
        return 0
    render(args.spec, args.out, args.images)
    print(f"wrote {args.out}")
    return 0
