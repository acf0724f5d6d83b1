"""Quality on real recordings: every model variant under the same CPU budget, one run.

    .venv/bin/python -m bench.bench_quality [--budget-s 300] [--data ../shared/data/esc10]

ESC-10 (400 real 5 s clips, 10 classes) is precomputed twice at 16 kHz into 64x64 log-mels
(1.02 s examples): once with the policies stores had before (`tail_policy="pad"`: the
remainder of a split clip zero-padded to a whole example) and once with today's defaults
(`"end"`: the last example ends at the clip's end). The generator trains only on the files
that `evaluate` does not hold out (`tasks.train_data.training_rows`, split by source file), so
no file is both trained on and used as the held-out real reference.

Each variant trains through the product's own code (`tasks.train_data.open_training_data`,
`prepare_trainer`, `train_block`), one after another on one torch thread, until the first
epoch boundary after `--budget-s` seconds of this process's CPU time (`TimeBudget` on
`time.process_time`: other jobs on the machine cannot shrink a variant's share), then
`tasks.evaluate.evaluate` scores its EMA generator against the held-out files of the
"end" store. Variants: the `seed` preset as stores were made before, `small` likewise
(today's default), `small` on the new examples (the data change alone), each conditioning
change alone on top of that, and the combination of the changes that helped (chosen by the
numbers of this run: `helped()`). Writes bench/results/quality.md and quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "quality.md"
RESULT_JSON = ROOT / "bench" / "results" / "quality.json"
DATA = ROOT.parent / "shared" / "data" / "esc10"
MEL = {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 64, "frames": 64}
LEGACY = {"tail_policy": "pad", "pad_policy": "zero-end"}
BATCH, SEED, N_PER_CLASS = 32, 0, 32

# name -> (preset switches on top of `small`, store); None switches = a built-in preset
CHANGES: dict[str, dict[str, Any]] = {
    "projection critic": {"critic_cond": "projection"},
    "conditional BatchNorm": {"gen_norm": "cbn"},
    "AC-GAN head (unconditional critic)": {"critic_cond": "none", "ac_weight": 1.0},
    "upsample + conv": {"upsample": "resize"},
    "minibatch stddev": {"mbstd": True},
}
# `--contenders`: changes tried on top of the default preset for user data (DiffAugment,
# Zhao et al. 2020: the critic sees real and generated examples through the same random
# differentiable transforms, gan.augment)
# (the default was small-proj-cbn when quality_contenders.md was measured: translation and
# translation + cutout on top of it; translation won and is in today's default)
# (quality_contenders_1200.md: cutout on top of translation did not help at 1200 CPU s).
# An entry's "train" holds TrainConfig changes instead of preset switches: fewer critic
# steps per generator step buy more generator steps in the same CPU budget (BigGAN trains
# with 2; Heusel et al.'s two time-scale rule lets the critic keep up with a higher rate).
CONTENDERS: dict[str, dict[str, Any]] = {
    "2 critic steps per G step": {"train": {"n_critic": 2}},
    "2 critic steps per G step, Adam 2e-4": {"train": {"n_critic": 2, "lr": 2e-4}},
}
RESULT_CONTENDERS = ROOT / "bench" / "results" / "quality_contenders.md"
RESULT_PRESETS = ROOT / "bench" / "results" / "quality_presets.md"
RESULT_PADDING = ROOT / "bench" / "results" / "quality_padding.md"
# `--pad-policies`: clips shorter than one example (FSDD's spoken digits, 0.3-0.9 s, against
# 1.02 s examples at 8 kHz: every row is a padded short clip) under each pad policy
SHORT_DATA = ROOT.parent / "shared" / "data" / "fsdd"
SHORT_MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 64, "frames": 64}


def precompute_store(data: Path, store: Path, policies: dict[str, str],
                     mel: dict[str, int] | None = None) -> dict[str, Any]:
    from flows.precompute import precompute

    return precompute(str(data), str(store), mel={**(mel or MEL), **policies}, device="cpu")


def train_variant(preset: str, store: Path, work: Path, budget_s: float,
                  train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `preset` on `store` for `budget_s` CPU seconds (`train`: TrainConfig changes);
    the exported bundle's path."""
    from gan.trainer import TimeBudget, TrainConfig
    from tasks.train import checkpoint_meta, export_checkpoint, prepare_trainer, train_block
    from tasks.train_data import open_training_data, summarise

    cfg = TrainConfig(preset=preset, epochs=1_000_000, batch_size=BATCH, seed=SEED,
                      device="cpu", checkpoint_every=1_000_000, sample_every=1_000_000,
                      **(train or {}))
    data = open_training_data(str(store), BATCH, SEED)
    trainer, _ = prepare_trainer(cfg, data, str(work / "ck"), False, False)
    w0, c0 = time.perf_counter(), time.process_time()
    budget = TimeBudget(budget_s, clock=time.process_time)
    block = train_block(trainer, data, cfg.epochs, str(work / "ck"),
                        checkpoint_meta(summarise(data), cfg), budget=budget)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    bundle = export_checkpoint(block["checkpoint"], str(work / "bundle"))
    return {"bundle": bundle, "epochs": block["epoch"], "g_steps": block["step"],
            "critic_steps": trainer.critic_step, "train_rows": data.rows,
            "held_out_rows": data.info.get("held_out_rows"), "wall_s": wall, "cpu_s": cpu}


def evaluate_variant(bundle_dir: str, store: Path, ceilings: bool) -> dict[str, float]:
    from storage.model_bundle import load_bundle_dir
    from tasks.evaluate import evaluate

    return evaluate(load_bundle_dir(bundle_dir), store, n_per_class=N_PER_CLASS,
                    ceilings=ceilings)


def helped(base: dict[str, float], other: dict[str, float]) -> bool:
    """A change helped when it raised generated accuracy by >= 0.03 without raising the
    Fréchet distance by more than 10%, or cut the distance by >= 10% without losing more
    than 0.03 of accuracy."""
    da = other["gen_accuracy"] - base["gen_accuracy"]
    fd = other["frechet_distance"] / max(base["frechet_distance"], 1e-9)
    return (da >= 0.03 and fd <= 1.10) or (fd <= 0.90 and da >= -0.03)


def combine(names: list[str]) -> dict[str, Any]:
    """The switches of several changes together (AC with the projection critic when both)."""
    out: dict[str, Any] = {}
    for n in names:
        out.update(CHANGES[n])
    if "projection critic" in names:
        out["critic_cond"] = "projection"
    return out


def run_one(label: str, preset: str, store: Path, ref_store: Path, work: Path,
            budget_s: float, ceilings: bool,
            train: dict[str, Any] | None = None) -> dict[str, Any]:
    print(f"== {label} (preset {preset}, store {store.name}, train {train or {}})", flush=True)
    trained = train_variant(preset, store, work / label.replace(" ", "_").replace(",", ""),
                            budget_s, train)
    t0 = time.perf_counter()
    metrics = evaluate_variant(trained["bundle"], ref_store, ceilings)
    row = {"label": label, "preset": preset, "store": store.name, **trained,
           "eval_s": time.perf_counter() - t0, "metrics": metrics}
    m = metrics
    print(f"   acc {m['gen_accuracy']:.3f} FD {m['frechet_distance']:.2f} "
          f"NDB/K {m['ndb_k']:.2f} IS {m['inception_score']:.2f} | {trained['g_steps']} G "
          f"steps, {trained['epochs']} epochs, {trained['cpu_s']:.0f} CPU s, "
          f"{trained['wall_s']:.0f} wall s", flush=True)
    return row


def fmt(x: float, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def report(rows: list[dict[str, Any]], real: dict[str, float], chosen: list[str],
           args: argparse.Namespace, classes: list[str], started: float) -> str:
    real_acc, real_fd = real["real_accuracy"], real["real_frechet_distance"]
    lines = [
        "# Quality on real recordings (ESC-10)",
        "",
        f"Command: `.venv/bin/python -m bench.bench_quality --budget-s {args.budget_s:g}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, 1 torch thread, device "
        f"cpu; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end; "
        f"whole run {(time.perf_counter() - started) / 60:.0f} min.",
        f"Data: ESC-10 at 16 kHz, 64x64 log-mels (1.02 s examples), {len(classes)} classes; "
        f"the generator trains on {rows[-1]['train_rows']} rows of the files evaluation does "
        f"not hold out ({rows[-1]['held_out_rows']} held-out rows, split by source file). "
        f"Every variant: batch {BATCH}, seed {SEED}, GP 10, n_critic 5, Adam 1e-4 (0.5, 0.9), "
        f"EMA 0.999, trained to the first epoch boundary after {args.budget_s:g} s of process "
        f"CPU time; {N_PER_CLASS} generated examples per class scored by the store's own "
        f"classifier (`audio-wgan evaluate`).",
        "",
        f"Real ceiling (held-out real rows, same classifier): accuracy {real_acc:.3f}, "
        f"Fréchet distance real-vs-real {real_fd:.2f}, IS {real['real_inception_score']:.2f}, "
        f"NDB/K {real['real_ndb_k']:.2f}.",
        "",
        "| variant | preset | examples | gen accuracy | gen / real accuracy | FD | "
        "FD / real FD | IS | NDB/K | diversity | G steps | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['label']} | `{r['preset']}` | {r['store'].split('.')[0]} | "
            f"{fmt(m['gen_accuracy'])} | {fmt(m['gen_accuracy'] / real_acc, '.2f')} | "
            f"{fmt(m['frechet_distance'], '.2f')} | "
            f"{fmt(m['frechet_distance'] / real_fd, '.1f')}x | "
            f"{fmt(m['inception_score'], '.2f')} | {fmt(m['ndb_k'], '.2f')} | "
            f"{fmt(m['diversity'], '.2f')} | {r['g_steps']} | {r['cpu_s']:.0f} |")
    lines += ["", "Per-class accuracy of generated examples:", "",
              "| variant | " + " | ".join(classes) + " |",
              "|---|" + "---|" * len(classes)]
    from tasks.evaluate import metric_key

    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['label']} | " + " | ".join(
            fmt(m.get(f"gen_accuracy/{metric_key(c)}"), ".2f") for c in classes) + " |")
    lines.append("| real ceiling | " + " | ".join(
        fmt(real.get(f"real_accuracy/{metric_key(c)}"), ".2f") for c in classes) + " |")
    lines += ["", f"Changes that helped over `small` on the new examples (`helped()`): "
              f"{', '.join(chosen) if chosen else 'none'}; the last row combines them."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="process CPU seconds of training per variant")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    ap.add_argument("--contenders", action="store_true",
                    help="only the default preset and CONTENDERS on top of it, into "
                    f"{RESULT_CONTENDERS.relative_to(ROOT)}")
    ap.add_argument("--presets", nargs="+", default=None, metavar="NAME",
                    help="only these built-in presets side by side (the first is the "
                    f"baseline), into {RESULT_PRESETS.relative_to(ROOT)}")
    ap.add_argument("--pad-policies", action="store_true",
                    help="only the default preset on short clips (--data defaults to FSDD "
                    "then), one store per pad policy, into "
                    f"{RESULT_PADDING.relative_to(ROOT)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the --contenders or --presets table here instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from gan.presets import PRESETS, register_preset

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.pad_policies:
            return pad_policies(args, work, started)
        legacy, new = work / "legacy.zarr", work / "end.zarr"
        for store, policies in ((legacy, LEGACY), (new, {})):
            if not store.exists():
                s = precompute_store(args.data, store, policies)
                print(f"{store.name}: {s['rows']} rows from {s['files']} files", flush=True)
        if args.contenders:
            return contenders(args, new, work, started)
        if args.presets:
            return side_by_side(args, new, work, started)
        base = PRESETS["small"]
        rows = [run_one("seed preset, examples as before", "seed", legacy, new, work,
                        args.budget_s, ceilings=True)]
        real = {k: v for k, v in rows[0]["metrics"].items() if k.startswith("real_")}
        rows.append(run_one("small (today's default), examples as before", "small", legacy,
                            new, work, args.budget_s, ceilings=False))
        ref = run_one("small, examples ending at the clip's end", "small", new, new, work,
                      args.budget_s, ceilings=False)
        rows.append(ref)
        chosen = []
        for i, (name, switches) in enumerate(CHANGES.items()):
            preset = register_preset(base.variant(f"bench-{i}", **switches)).name
            row = run_one(f"+ {name}", preset, new, new, work, args.budget_s, ceilings=False)
            rows.append(row)
            if helped(ref["metrics"], row["metrics"]):
                chosen.append(name)
        if len(chosen) >= 2:
            switches = combine(chosen)
            preset = register_preset(base.variant("bench-combined", **switches)).name
            rows.append(run_one("+ " + " + ".join(chosen), preset, new, new, work,
                                args.budget_s, ceilings=False))
        from storage.mel_store import MelStore

        classes = list(MelStore.open(new).classes)
        text = report(rows, real, chosen, args, classes, started)
    RESULT.write_text(text)
    RESULT_JSON.write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "bundle"}
                                                for r in rows], "real": real,
                                       "chosen": chosen}, indent=1, default=str))
    print(text)
    return 0


def contenders(args: argparse.Namespace, store: Path, work: Path, started: float) -> int:
    """The default preset beside each CONTENDERS change on top of it, same budget."""
    from flows.defaults import DEFAULT_PRESET
    from gan.presets import PRESETS, register_preset
    from storage.mel_store import MelStore

    base = PRESETS[DEFAULT_PRESET]
    rows = [run_one(f"{DEFAULT_PRESET} (default for user data)", DEFAULT_PRESET, store, store,
                    work, args.budget_s, ceilings=True)]
    real = {k: v for k, v in rows[0]["metrics"].items() if k.startswith("real_")}
    for i, (name, change) in enumerate(CONTENDERS.items()):
        switches = {k: v for k, v in change.items() if k != "train"}
        preset = (register_preset(base.variant(f"bench-contender-{i}", **switches)).name
                  if switches else DEFAULT_PRESET)
        rows.append(run_one(f"+ {name}", preset, store, store, work, args.budget_s,
                            ceilings=False, train=change.get("train")))
    classes = list(MelStore.open(store).classes)
    chosen = [r["label"].removeprefix("+ ") for r in rows[1:]
              if helped(rows[0]["metrics"], r["metrics"])]
    text = report(rows, real, chosen, args, classes, started).replace(
        "--budget-s", "--contenders --budget-s").replace(
        "over `small` on the new examples", f"over `{DEFAULT_PRESET}`").replace(
        "; the last row combines them", "").replace(
        "# Quality on real recordings (ESC-10)",
        "# Quality on real recordings (ESC-10): changes on top of the default", 1)
    if args.out:
        text = text.replace("--contenders --budget-s", f"--contenders --out {args.out} --budget-s")
    (args.out or RESULT_CONTENDERS).write_text(text)
    print(text)
    return 0


def side_by_side(args: argparse.Namespace, store: Path, work: Path, started: float) -> int:
    """Built-in presets one after another under the same budget, the first as baseline."""
    from storage.mel_store import MelStore

    rows = [run_one(name, name, store, store, work, args.budget_s, ceilings=i == 0)
            for i, name in enumerate(args.presets)]
    real = {k: v for k, v in rows[0]["metrics"].items() if k.startswith("real_")}
    chosen = [r["label"] for r in rows[1:] if helped(rows[0]["metrics"], r["metrics"])]
    text = report(rows, real, chosen, args, list(MelStore.open(store).classes), started)
    text = text.replace("--budget-s", f"--presets {' '.join(args.presets)} --budget-s").replace(
        "over `small` on the new examples", f"over `{args.presets[0]}`").replace(
        "; the last row combines them", "").replace(
        "# Quality on real recordings (ESC-10)",
        "# Quality on real recordings (ESC-10): presets side by side", 1)
    if args.out:
        text = text.replace(" --budget-s", f" --out {args.out} --budget-s", 1)
    (args.out or RESULT_PRESETS).write_text(text)
    print(text)
    return 0


def pad_policies(args: argparse.Namespace, work: Path, started: float) -> int:
    """The default preset on short clips, one store per pad policy, same budget.

    Each store has its own held-out files, classifier and real ceiling (the padding is part
    of what real rows look like), so policies compare by generated / real accuracy and
    FD / real-vs-real FD, each against its own ceiling."""
    from flows.defaults import DEFAULT_PRESET
    from gan.mel_config import PAD_POLICIES
    from storage.mel_store import MelStore

    data = args.data if args.data != DATA else SHORT_DATA
    rows = []
    for policy in PAD_POLICIES:
        store = work / f"pad-{policy}.zarr"
        if not store.exists():
            s = precompute_store(data, store, {"pad_policy": policy}, SHORT_MEL)
            print(f"{store.name}: {s['rows']} rows from {s['files']} files", flush=True)
        rows.append(run_one(f"pad {policy}", DEFAULT_PRESET, store, store, work, args.budget_s,
                            ceilings=True))
    classes = list(MelStore.open(work / f"pad-{PAD_POLICIES[0]}.zarr").classes)
    secs = SHORT_MEL["frames"] * SHORT_MEL["hop_length"] / SHORT_MEL["sample_rate"]
    lines = [
        "# Quality on short clips: the pad policy",
        "",
        f"Command: `.venv/bin/python -m bench.bench_quality --pad-policies --budget-s "
        f"{args.budget_s:g}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, 1 torch thread, device "
        f"cpu; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end; "
        f"whole run {(time.perf_counter() - started) / 60:.0f} min.",
        f"Data: {data.name} ({rows[0]['train_rows'] + (rows[0]['held_out_rows'] or 0)} rows, "
        f"{len(classes)} classes) at {SHORT_MEL['sample_rate'] // 1000} kHz, "
        f"{SHORT_MEL['n_mels']}x{SHORT_MEL['frames']} log-mels ({secs:.2f} s examples), so "
        f"nearly every clip is shorter than one example and padded by the store's "
        f"`pad_policy`: "
        f"`zero-end` (digital silence after the clip), `loop` (the clip repeated), `noise` "
        f"(noise at the clip's own noise floor). One store per policy, each with its own "
        f"held-out files (split by source file), classifier and real ceiling. Preset "
        f"`{DEFAULT_PRESET}`, batch {BATCH}, seed {SEED}, trained to the first epoch boundary "
        f"after {args.budget_s:g} s of process CPU time; {N_PER_CLASS} generated examples "
        f"per class.",
        "",
        "| pad policy | real accuracy | gen accuracy | gen / real accuracy | real-vs-real FD | "
        "FD | FD / real FD | IS | NDB/K | G steps | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        ra, rf = m["real_accuracy"], m["real_frechet_distance"]
        lines.append(
            f"| `{r['label'].removeprefix('pad ')}` | {fmt(ra)} | {fmt(m['gen_accuracy'])} | "
            f"{fmt(m['gen_accuracy'] / ra, '.2f')} | {fmt(rf, '.2f')} | "
            f"{fmt(m['frechet_distance'], '.2f')} | {fmt(m['frechet_distance'] / rf, '.1f')}x | "
            f"{fmt(m['inception_score'], '.2f')} | {fmt(m['ndb_k'], '.2f')} | "
            f"{r['g_steps']} | {r['cpu_s']:.0f} |")
    # chosen as models are promoted (tasks.evaluate.PROMOTION_METRIC, lower is better), here
    # relative to each store's own real-vs-real distance
    best = min(rows, key=lambda r: r["metrics"]["frechet_distance"]
               / r["metrics"]["real_frechet_distance"])
    lines += ["", f"Lowest FD / real FD (the promotion metric, against each store's own real "
              f"ceiling): `{best['label'].removeprefix('pad ')}`."]
    text = "\n".join(lines) + "\n"
    RESULT_PADDING.write_text(text)
    RESULT_PADDING.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
