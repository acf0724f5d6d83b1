"""CLI start-up: wall time and peak RSS of the quick commands beside bare Python and torch.

    .venv/bin/python -m bench.bench_cli [--reps 3] [--files 1631] [--no-precompute]
                                        [--out FILE]

Every command runs as a user runs it (the console script, a fresh process), in one run,
repetitions interleaved round-robin; the median of `--reps` is reported. The store is
built once, in a temp dir, by `audio-wgan precompute` from the first `--files` clips of
../shared/data/fsdd (taken round-robin over the digits, linked, read in place).

- `python -c pass` and `python -c "import torch"`: the floor, and what importing torch
  alone costs here;
- `audio-wgan --help`, `audio-wgan models` (a fresh SQLite registry in the temp dir,
  migrated before timing; no model is registered, so it exits 2 with its one line),
  `audio-wgan store-info STORE`, and what bash runs when TAB completes `audio-wgan sto`;
- `audio-wgan precompute` of the unchanged data (it starts a flow: on a Prefect server the
  command starts for itself unless PREFECT_API_URL names one; with
  AUDIO_WGAN_COMMAND_SERVER=0 on Prefect's temporary server, the baseline), and the same
  after `audio-wgan server start` (a background Prefect server in the temp dir, started
  once before timing);
- an unchanged `audio-wgan run` (the retrain flow finds the store's content registered and
  stops), the same three ways; in its own folder, where `audio-wgan run --epochs 1` first
  trained and registered a model (its own SQLite registry, so the `models` row keeps its
  versions).

Peak RSS is GNU time's %M of the command (its largest process; /usr/bin/time starts
each one). Writes bench/results/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from audio_wgan.prefect_server import COMMAND_SERVER_VAR

ROOT = Path(__file__).resolve().parents[1]
RESULT = Path(__file__).resolve().parent / "results" / "cli.md"
PY = sys.executable
CLI = str(Path(PY).with_name("audio-wgan"))
GNU_TIME = "/usr/bin/time"
TARGET_S = 0.6  # issue 13: store-info, models and --help under 0.6 s
PRECOMPUTE_TARGET_S = 2.5  # issue 13: an unchanged precompute of 1,631 files
RUN_TARGET_S = 5.0  # issue 13: an unchanged `audio-wgan run`


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KB, exit code) of one fresh process.

    The peak RSS comes from GNU time, which starts the command: Linux carries a process's
    RSS high-water mark across exec, so a child forked from this process (torch is loaded
    here) would report this process's size, not its own.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss.name, *argv], cwd=cwd,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        kb = int(Path(rss.name).read_text().split()[-1])
    return wall, kb, proc.returncode


def build_store(tmp: Path, files: int, env: dict[str, str]) -> tuple[Path, Path, int]:
    from bench.bench_precompute import SHARED, link_subset, list_files

    chosen = list_files(SHARED / "fsdd", files)
    data = link_subset(chosen, tmp / "data")
    store = tmp / "mels.zarr"
    subprocess.run([CLI, "precompute", str(data), "--store", str(store)], cwd=tmp, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return data, store, len(chosen)


REGISTERED = 3  # model versions in the registry `models` lists
POPULATE = """
import numpy as np, sys
from pathlib import Path
from gan.mel_config import MelConfig
from gan.models import build_models
from storage import registry
from storage.model_bundle import save_bundle
from tasks import tracking
tmp = Path(sys.argv[1])
mel = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
for i in range(int(sys.argv[2])):
    gen, _ = build_models(3, 32, 32, "tiny")
    b = save_bundle(tmp / f"bundle{i}", gen.state_dict(), "tiny", ["a", "b", "c"], mel,
                    np.zeros(32), np.ones(32), {})
    run = tracking.start_run("audio-wgan", {"preset": "tiny"}, {})
    for key, value in (("critic_loss", -1.0 - i), ("eval_frechet_distance", 20.0 - i)):
        registry.client().log_metric(run, key, value, step=1)
    registry.log_generator_model(b, run, "audio-wgan", {"preset": "tiny", "epochs": "1"})
    tracking.end_run(run)
registry.set_alias("audio-wgan", "champion", 1)
"""


def populate_registry(tmp: Path, env: dict[str, str]) -> None:
    """REGISTERED tiny versions with metrics and an alias, registered by MLflow itself."""
    subprocess.run([PY, "-c", POPULATE, str(tmp), str(REGISTERED)], cwd=tmp, check=True,
                   env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def before_rows(rows: dict[str, list[str]], rev: str, tmp: Path, env: dict[str, str],
                envs: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """The audio-wgan rows again, on the code of commit `rev` (first on PYTHONPATH)."""
    old = tmp / "before"
    old.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.strip()
    envs[short] = {**env, "PYTHONPATH": str(old)}
    return {f"{label} *before* ({short})": [short, PY, "-m", "audio_wgan.cli", *argv_[1:]]
            for label, argv_ in rows.items() if argv_[0] == CLI}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", type=int, default=1631)
    ap.add_argument("--no-precompute", action="store_true",
                    help="leave out the unchanged precompute (it is the slow row)")
    ap.add_argument("--no-server", action="store_true",
                    help="leave out the unchanged precompute on `audio-wgan server start`'s "
                    "server")
    ap.add_argument("--no-run", action="store_true",
                    help="leave out the unchanged `audio-wgan run` (its set-up trains twice)")
    ap.add_argument("--before", metavar="REV",
                    help="also run each audio-wgan command on the code of commit REV")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    cmd = ".venv/bin/python -m bench.bench_cli " + " ".join(argv or sys.argv[1:])
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cli-")))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
        data, store, n_files = build_store(tmp, args.files, env)
        populate_registry(tmp, env)
        via_mlflow = {**env, "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"] + "?timeout=5"}
        # a before or served row's argv starts with its key in envs (and cwds)
        envs: dict[str, dict[str, str]] = {"mlflow": via_mlflow}
        cwds: dict[str, Path] = {}
        rows: dict[str, list[str]] = {
            "python -c pass": [PY, "-c", "pass"],
            'python -c "import torch"': [PY, "-c", "import torch"],
            "audio-wgan --help": [CLI, "--help"],
            f"audio-wgan models ({REGISTERED} versions)": [CLI, "models"],
            f"audio-wgan models ({REGISTERED} versions) through MLflow": ["mlflow", CLI,
                                                                         "models"],
            f"audio-wgan store-info STORE ({n_files} files)": [CLI, "store-info", str(store)],
        }
        # what bash runs on TAB (after `audio-wgan sto`): the console script with click's
        # completion variables; it builds every command, as --help does
        envs["complete"] = {**env, "_AUDIO_WGAN_COMPLETE": "complete_bash",
                            "COMP_WORDS": "audio-wgan sto", "COMP_CWORD": "1"}
        rows["audio-wgan <TAB> (bash completion of `audio-wgan sto`)"] = ["complete", CLI]
        if not args.no_precompute:
            rows[f"audio-wgan precompute DATA --store STORE (unchanged, {n_files} files)"] = [
                CLI, "precompute", str(data), "--store", str(store)]
            envs["prefect-temp"] = {**env, COMMAND_SERVER_VAR: "0"}
            rows[f"audio-wgan precompute DATA --store STORE (unchanged, {n_files} files, "
                 f"{COMMAND_SERVER_VAR}=0)"] = [
                "prefect-temp", CLI, "precompute", str(data), "--store", str(store)]
        if not (args.no_precompute or args.no_server):
            served = tmp / "served"  # the server's record lives in its working directory
            served.mkdir()
            envs["served"] = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
            envs["served"]["PREFECT_HOME"] = str(tmp / "prefect-home")
            cwds["served"] = served
            subprocess.run([CLI, "server", "start", "--port", str(free_port())], cwd=served,
                           env=envs["served"], check=True, stdout=subprocess.DEVNULL)
            stack.callback(subprocess.run, [CLI, "server", "stop"], cwd=served,
                           env=envs["served"], stdout=subprocess.DEVNULL)
            rows[f"audio-wgan precompute DATA --store STORE (unchanged, {n_files} files, "
                 "after `audio-wgan server start`)"] = [
                "served", CLI, "precompute", str(data), "--store", str(store)]
        if not args.no_run:
            rows.update(run_rows(tmp, env, envs, cwds, served=not args.no_server))
        if args.before:
            rows.update(before_rows(rows, args.before, tmp, env, envs))
        runs: dict[str, list[tuple[float, int, int]]] = {k: [] for k in rows}
        for rep in range(args.reps):
            for label, argv_ in rows.items():
                if argv_[0] in envs:
                    runs[label].append(timed(argv_[1:], cwds.get(argv_[0], tmp),
                                             envs[argv_[0]]))
                else:
                    runs[label].append(timed(argv_, tmp, env))
            print(f"repetition {rep + 1}/{args.reps} done", flush=True)
    text = report(runs, cmd, args.reps, args.before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def run_rows(tmp: Path, env: dict[str, str], envs: dict[str, dict[str, str]],
             cwds: dict[str, Path], served: bool) -> dict[str, list[str]]:
    """Rows of an unchanged `audio-wgan run`, each in a folder where one run trained first
    (the served one in the folder whose `audio-wgan server start` is recorded)."""
    rows = {}
    places = [("run-temp", tmp / "run-temp", {k: v for k, v in env.items()
                                              if k != "PREFECT_API_URL"}, "")]
    if served:
        places.append(("run-served", cwds["served"], envs["served"],
                       ", after `audio-wgan server start`"))
    for key, cwd, base, note in places:
        cwd.mkdir(exist_ok=True)
        envs[key] = {k: v for k, v in base.items() if k != "MLFLOW_TRACKING_URI"}
        cwds[key] = cwd
        subprocess.run([CLI, "run", "--epochs", "1"], cwd=cwd, env=envs[key], check=True,
                       stdout=subprocess.DEVNULL)
        rows[f"audio-wgan run (unchanged{note})"] = [key, CLI, "run"]
        if key == "run-temp":  # the same, on Prefect's temporary server
            envs["run-prefect-temp"] = {**envs[key], COMMAND_SERVER_VAR: "0"}
            cwds["run-prefect-temp"] = cwd
            rows[f"audio-wgan run (unchanged, {COMMAND_SERVER_VAR}=0)"] = [
                "run-prefect-temp", CLI, "run"]
    return rows


def report(runs: dict[str, list[tuple[float, int, int]]], cmd: str, reps: int,
           rev: str | None) -> str:
    import torch

    before = (f" Rows marked *before* run the same command on the code of commit {rev} "
              f"(`git archive`, `python -m audio_wgan.cli` with it first on PYTHONPATH)."
              if rev else "")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    server = ("the Prefect server at PREFECT_API_URL" if os.environ.get("PREFECT_API_URL")
              else "a Prefect server the command starts for itself (PREFECT_API_URL unset), "
              f"or with {COMMAND_SERVER_VAR}=0 on Prefect's temporary server")
    lines = [
        "# CLI start-up",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}. Load average at the end "
        f"{load}: other jobs shared the cores, so wall times are noisy. Each command is a "
        f"fresh process, as a user runs it; repetitions interleaved round-robin, median of "
        f"{reps}. Peak RSS: GNU time's %M (the largest process of the command). `models` "
        f"lists {REGISTERED} versions of a SQLite registry MLflow wrote, read directly, and "
        f"(the baseline) through MLflow (the same database with `?timeout=5` in its URI, "
        f"which the direct reader leaves to MLflow); precompute's flow runs on "
        f"{server}.{before}",
        "",
        "| command | median wall s | min wall s | median peak RSS MB | exit | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, rs in runs.items():
        walls = [r[0] for r in rs]
        rss = statistics.median(r[1] for r in rs) / 1024
        codes = ",".join(sorted({str(r[2]) for r in rs}))
        quick = label.startswith(("audio-wgan --help", "audio-wgan models",
                                  "audio-wgan store-info", "audio-wgan <TAB>")
                                 ) and "before" not in label and "MLflow" not in label
        baseline = "before" in label or COMMAND_SERVER_VAR in label
        limit = None if baseline else (TARGET_S if quick else PRECOMPUTE_TARGET_S
                 if label.startswith("audio-wgan precompute")
                 else RUN_TARGET_S if label.startswith("audio-wgan run") else None)
        target = ""
        if limit is not None:
            ok = statistics.median(walls) < limit
            target = f"< {limit} s: {'met' if ok else 'not met'}"
        lines.append(f"| `{label}` | {statistics.median(walls):.2f} | {min(walls):.2f} | "
                     f"{rss:.0f} | {codes} | {target} |")
    lines += [
        "",
        "Reading: the CLI is typer 0.28 (0.29 builds a pydantic TypeAdapter for every "
        "parameter, ~0.3 s per command here; click's plain help formatter; rich is "
        "imported only to draw a progress bar). `--help` (of every command), shell "
        "completion, `store-info` and `models` import neither torch nor Prefect nor "
        "MLflow nor Zarr nor numpy (tests/test_cli_startup.py checks the imports in a "
        "fresh interpreter): `store-info` answers from the store's committed manifest "
        "(storage/store_summary.py) and `models` reads MLflow's SQLite database itself "
        "(storage/registry_listing.py); the MLflow row is what `models` cost before. An "
        "unchanged precompute is a Prefect flow run. Without a configured server Prefect "
        "would start its temporary server when the flow first calls the API, after "
        "importing the whole server application in the command's process, and wait for "
        "it; instead the command starts Prefect's `prefect server start` (its run, task "
        "and event recording services, as the temporary server runs) the moment it starts "
        "and imports its flow meanwhile, then stops it (audio_wgan/prefect_server.py); "
        f"the {COMMAND_SERVER_VAR}=0 rows are Prefect's own way, the baseline. With the "
        "server that `audio-wgan server start` leaves running, what is left is importing "
        "Prefect (1.3-2.5 s on "
        "the machines this ran on) and the flow run itself: nothing is decoded, so torch "
        "is never imported, and the store, settled by the run before, is answered from "
        "its manifest under the writer's lock without Zarr or numpy "
        "(storage/store_settled.py). Every command leaves without the interpreter's "
        "teardown (audio_wgan.cli.console: ~0.3 s once Prefect is loaded). An unchanged "
        "`run` is the retrain flow with the precompute flow inside it: it stops after the "
        "train-or-skip plan (tasks/retrain_plan.py, which reads the SQLite registry "
        "directly) and imports its training half (torch, MLflow, matplotlib) only when it "
        "trains. The targets are met on the server that `audio-wgan server start` "
        "records, the way we chose (Prefect's own `prefect server start --background`, "
        "reused while it answers); a server for one command still costs that command "
        "the server's start-up, beside its own.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
