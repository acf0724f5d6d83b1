"""Data-parallel training on the CPU with 2 gloo ranks: really started, never mocked.

The trainer-level tests spawn two ranks with torch.multiprocessing (a process group over a
file store in a temp dir); the end-to-end tests run `audio-wgan train --nproc 2`, which
launches `torchrun --standalone`. Kills are fault points (a rank SIGKILLs itself at a named
epoch end), never timers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from registry_fixtures import TINY_MEL, fresh_mlflow, one_torch_thread, write_tone_dataset

import gan.trainer
from gan.data import ResidentData
from gan.distributed import World, shard
from gan.trainer import TrainConfig, WGANTrainer
from storage.checkpoints import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.integration
H = W = 32
N_CLASSES, B = 3, 8
CFG = {"preset": "tiny", "batch_size": B, "n_critic": 2, "device": "cpu", "seed": 5}


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, H, W, generator=g).clamp(-4, 4), torch.arange(n) % N_CLASSES


def _spawn(fn, tmp_path: Path, *args) -> list[dict]:  # noqa: ANN001
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(fn, args=(str(tmp_path / "pg"), str(out), *args), nprocs=2, join=True)
    return [torch.load(out / f"{r}.pt", weights_only=True) for r in range(2)]


def _join(rank: int, pg: str) -> World:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{pg}", rank=rank, world_size=2)
    return World(rank, 2, rank)


def _fit_rank(rank: int, pg: str, out: str) -> None:
    world = _join(rank, pg)
    tr = WGANTrainer(TrainConfig(**CFG), N_CLASSES, H, W, world)
    tr.fit(ResidentData(*_data()), 2)
    state = tr.state_dict()  # collective
    torch.save({"generator": state["generator"], "critic": state["critic"],
                "ema": state["ema_generator"], "critic_step": tr.critic_step,
                "keys": list(state["generator"]) + list(state["critic"]),
                "rng_ranks": len(state["rng_ranks"])}, Path(out) / f"{rank}.pt")
    world.leave()


def test_ranks_end_with_identical_weights_and_share_the_epoch(tmp_path: Path) -> None:
    a, b = _spawn(_fit_rank, tmp_path)
    for key in ("generator", "critic", "ema"):
        for name, t in a[key].items():
            if t.is_floating_point() and "running" not in name:  # parameters, bitwise
                assert torch.equal(t, b[key][name]), f"{key}.{name}"
    assert not any(k.startswith("module.") for k in a["keys"])
    # 64 rows, batch 8 on each of 2 ranks: 4 steps an epoch each (an effective batch of 16)
    assert a["critic_step"] == b["critic_step"] == 2 * 64 // (2 * B)
    assert a["rng_ranks"] == 2


def test_shards_are_disjoint_and_cover_a_global_batch() -> None:
    order = torch.randperm(70, generator=torch.Generator().manual_seed(1))
    r0, r1 = (shard(order, 8, World(r, 2)) for r in (0, 1))
    assert len(r0) == len(r1) == 70 // 16
    for a, b in zip(r0, r1, strict=True):
        assert not set(a.tolist()) & set(b.tolist())
    single = shard(order, 16, World())
    assert [torch.cat([a, b]).tolist() for a, b in zip(r0, r1, strict=True)] == \
        [s.tolist() for s in single]


def _critic_step(world: World, real: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                 eps: torch.Tensor) -> tuple[WGANTrainer, torch.Tensor]:
    """One critic step with the noise and interpolation weights given (not drawn), and the
    generator in eval mode (BatchNorm statistics are per rank without SyncBatchNorm)."""
    tr = WGANTrainer(TrainConfig(**CFG), N_CLASSES, H, W, world)
    tr.generator.eval()
    tr._noise = lambda n: noise  # noqa: SLF001
    orig = gan.trainer.interpolate
    gan.trainer.interpolate = lambda real_, fake, _g: torch.lerp(fake.float(), real_.float(),
                                                                 eps.view(-1, 1, 1, 1))
    try:
        out = tr._critic_step(real, labels)  # noqa: SLF001
    finally:
        gan.trainer.interpolate = orig
    return tr, out


def _global_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    real = torch.randn(2 * B, 1, H, W, generator=g)
    return (real, torch.arange(2 * B) % N_CLASSES, torch.randn(2 * B, 100, generator=g),
            torch.rand(2 * B, generator=g))


def _grads(tr: WGANTrainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in tr.critic.named_parameters()}


def _step_rank(rank: int, pg: str, out: str) -> None:
    world = _join(rank, pg)
    real, labels, noise, eps = (t[rank * B:(rank + 1) * B] for t in _global_batch())
    tr, losses = _critic_step(world, real, labels, noise, eps)
    torch.save({"losses": losses, "grads": _grads(tr)}, Path(out) / f"{rank}.pt")
    world.leave()


def test_a_step_on_two_ranks_equals_one_step_on_their_global_batch(tmp_path: Path) -> None:
    ranks = _spawn(_step_rank, tmp_path)
    single, losses = _critic_step(World(), *_global_batch())
    # losses are batch means: the mean of the ranks' equals the global batch's
    mean = (ranks[0]["losses"] + ranks[1]["losses"]) / 2
    torch.testing.assert_close(mean, losses, rtol=1e-5, atol=1e-5)
    # DDP averaged the gradients (penalty included): the global batch's, on both ranks
    for name, g in _grads(single).items():
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-4, atol=1e-6)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name])


def _save_state_rank(rank: int, pg: str, out: str) -> None:
    world = _join(rank, pg)
    tr = WGANTrainer(TrainConfig(**CFG), N_CLASSES, H, W, world)
    tr.fit(ResidentData(*_data()), 1)
    state = tr.state_dict()  # collective
    if rank == 0:
        torch.save(state, Path(out) / "two-ranks.pt")
    torch.save({}, Path(out) / f"{rank}.pt")
    world.leave()


def _resume_rank(rank: int, pg: str, out: str, path: str) -> None:
    world = _join(rank, pg)
    tr = WGANTrainer(TrainConfig(**CFG), N_CLASSES, H, W, world)
    tr.load_state_dict(torch.load(path, weights_only=True))
    loaded = {k: v.clone() for k, v in tr.generator.state_dict().items()}
    tr.fit(ResidentData(*_data()), 2)
    params = {n: t.detach() for n, t in tr.generator.named_parameters()}  # BN buffers stay
    torch.save({"loaded": loaded, "params": params, "epoch": tr.epoch},  # rank-local
               Path(out) / f"{rank}.pt")
    world.leave()


def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path: Path) -> None:
    """N -> M ranks: weights, optimisers and counters continue exactly; the noise streams
    start anew (seeded by seed, rank and epoch), so the run is not bitwise the one that
    kept N ranks, and the effective batch becomes M x batch."""
    _spawn(_save_state_rank, tmp_path / "a")
    two = torch.load(tmp_path / "a" / "out" / "two-ranks.pt", weights_only=True)
    assert two["world_size"] == 2
    one = WGANTrainer(TrainConfig(**CFG), N_CLASSES, H, W)  # 2 ranks -> 1
    one.load_state_dict(two)
    assert one.epoch == 1 and one.critic_step == two["critic_step"]
    one.fit(ResidentData(*_data()), 2)
    assert one.epoch == 2 and one.weights_finite()

    solo = WGANTrainer(TrainConfig(**CFG), N_CLASSES, H, W)  # 1 rank -> 2
    solo.fit(ResidentData(*_data()), 1)
    torch.save(solo.state_dict(), tmp_path / "solo.pt")
    ranks = _spawn(_resume_rank, tmp_path / "b", str(tmp_path / "solo.pt"))
    for name, t in solo.generator.state_dict().items():
        assert torch.equal(ranks[0]["loaded"][name], t), name
    for name, t in ranks[0]["params"].items():
        assert torch.equal(t, ranks[1]["params"][name]), name
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 2


# ------------------------------------------------------------------ through torchrun


@pytest.fixture(scope="module")
def store(tmp_path_factory, prefect_harness) -> Path:
    from flows.precompute import precompute

    root = tmp_path_factory.mktemp("ddp")
    data = write_tone_dataset(root / "data", clips=6)
    path = root / "mels.zarr"
    precompute(str(data), str(path), mel={k: getattr(TINY_MEL, k) for k in (
        "sample_rate", "n_fft", "hop_length", "n_mels", "frames")})
    return path


def _train(store: Path, ck: Path, *extra: str, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    """`audio-wgan train --nproc 2` in a fresh process, as a user runs it."""
    cmd, run_env, cwd = _train_args(store, ck, *extra, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=run_env,
                          cwd=cwd)


def _train_args(store: Path, ck: Path, *extra: str, env: dict | None = None
                ) -> tuple[list[str], dict[str, str], Path]:
    """The command line, environment and folder of `_train`."""
    cmd = [sys.executable, "-m", "audio_wgan.cli", "train", "--store", str(store),
           "--preset", "tiny", "--batch-size", "8", "--checkpoint-dir", str(ck),
           "--checkpoint-every", "1", "--nproc", "2", "--quiet", *extra]
    from prefect.settings import PREFECT_API_URL

    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(PREFECT_API_URL=str(PREFECT_API_URL.value()),  # the session's test server
                PREFECT_HOME=str(ck.parent / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                **{RUN_MARK: str(ck)})
    return cmd, {**base, **(env or {})}, ck.parent


RUN_MARK = "AUDIO_WGAN_TEST_RUN"  # in the environment of a _train run, and so of its ranks


def ranks_left(ck: Path) -> list[int]:
    """Rank processes still alive of the _train runs into `ck` (another test session on the
    machine may be running ranks of its own: only ours count)."""
    found = subprocess.run(["pgrep", "-f", "tasks.train_parallel"], capture_output=True,
                           text=True).stdout.split()
    mine = []
    for pid in found:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if f"{RUN_MARK}={ck}".encode() in env:
            mine.append(int(pid))
    return mine


def _generator(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["generator"]


def test_nproc_2_trains_registers_and_resumes_bitwise(store: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    fresh_mlflow(tmp_path, monkeypatch)
    straight = _train(store, tmp_path / "a", "--epochs", "2", "--no-register",
                      "--checkpoint-every", "2")  # one torchrun launch for both epochs
    assert straight.returncode == 0, straight.stderr[-2000:]
    state = load_checkpoint(tmp_path / "a" / "epoch_00002.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in state["generator"])

    first = _train(store, tmp_path / "b", "--epochs", "1", "--no-register")
    assert first.returncode == 0, first.stderr[-2000:]
    again = _train(store, tmp_path / "b", "--epochs", "2", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "registered audio-wgan version 1 as champion" in again.stdout
    a, b = _generator(tmp_path / "a" / "epoch_00002.pt"), _generator(tmp_path / "b" /
                                                                      "epoch_00002.pt")
    for name, t in a.items():
        assert torch.equal(t, b[name]), name  # resumed == never stopped, same world size
    assert "terminate called" not in straight.stderr + again.stderr


def test_a_killed_rank_ends_the_run_in_one_line_and_the_next_run_resumes(
        store: Path, tmp_path: Path, monkeypatch) -> None:
    fresh_mlflow(tmp_path, monkeypatch)
    ck = tmp_path / "ck"
    dead = _train(store, ck, "--epochs", "3", "--no-register",
                  env={"AUDIO_WGAN_KILL_AT": "rank1-epoch2:1"})
    last = dead.stderr.strip().splitlines()[-1]
    assert dead.returncode == 2, dead.stderr[-2000:]
    assert "rank 1 was killed (SIGKILL)" in last and "epoch_00001.pt" in last
    assert [p.name for p in list_checkpoints(ck)] == ["epoch_00001.pt"]
    assert ranks_left(ck) == []  # no rank outlives the run
    back = _train(store, ck, "--epochs", "3", "--resume", "--no-register")
    assert back.returncode == 0, back.stderr[-2000:]
    assert [p.name for p in list_checkpoints(ck)][-1] == "epoch_00003.pt"
    json.dumps(back.stdout)  # printable


def _wait_until(check, limit_s: float = 120.0) -> bool:  # noqa: ANN001
    """Poll `check()` until true or `limit_s` passes (a bound, not a timing claim)."""
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())


def test_a_command_killed_outright_leaves_no_rank_and_frees_its_folder(
        store: Path, tmp_path: Path, monkeypatch) -> None:
    """`train --nproc 2` SIGKILLed while its ranks train: torchrun (and so every rank)
    dies with it, so nothing writes checkpoints behind a `--resume` started next, which
    then takes the folder (its lock died with the command) and goes on."""
    import signal

    fresh_mlflow(tmp_path, monkeypatch)
    ck = tmp_path / "ck"
    marker = tmp_path / "held"
    cmd, env, cwd = _train_args(store, ck, "--epochs", "4", "--no-register", env={
        "AUDIO_WGAN_HOLD_AT": "rank0-epoch2:1", "AUDIO_WGAN_HOLD_FILE": str(marker)})
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(marker.exists, 300), "rank 0 never reached epoch 2"
        assert ranks_left(ck)  # torchrun and both ranks are running
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_until(lambda: ranks_left(ck) == []), ranks_left(ck)
    finally:
        proc.kill()
        for pid in ranks_left(ck):
            os.kill(pid, signal.SIGKILL)
    # each block (one epoch: --checkpoint-every 1) is a torchrun of its own: the second
    # was held before its checkpoint
    assert [p.name for p in list_checkpoints(ck)] == ["epoch_00001.pt"]
    back = _train(store, ck, "--epochs", "4", "--resume", "--no-register")
    assert back.returncode == 0, back.stderr[-2000:]
    assert "(epoch 1)" in back.stdout.splitlines()[0], back.stdout
    assert [p.name for p in list_checkpoints(ck)][-1] == "epoch_00004.pt"


def test_a_checkpoint_folder_in_use_is_refused_in_one_line(store: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    from storage.checkpoints import checkpoint_folder_lock

    fresh_mlflow(tmp_path, monkeypatch)
    ck = tmp_path / "ck"
    with checkpoint_folder_lock(ck):
        busy = _train(store, ck, "--epochs", "1", "--resume", "--no-register")
    assert busy.returncode == 2, busy.stderr[-2000:]
    assert busy.stderr.strip().splitlines()[-1] == (
        f"audio-wgan train: error: checkpoint folder {ck} is being written by another "
        f"training run (pid {os.getpid()}); wait for it to finish, or use another "
        "--checkpoint-dir")
    assert list_checkpoints(ck) == []
