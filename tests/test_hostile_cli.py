"""Careless command lines: out-of-range numbers, outputs under regular files, mel
configurations the models cannot train on. Each is refused in one line (exit 2) before any
work, and nothing is created or changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_checks import refused
from registry_fixtures import make_bundle

from gan.limits import SEED
from storage.output_paths import OutputPathError, check_output_dir

BIG = str(10**23)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    f = tmp_path / "a_file"
    f.write_text("a regular file where a folder is expected\n")
    return f


def _argvs(bundle: Path, out: Path) -> dict[str, list[str]]:
    """One valid command line per command that takes a seed."""
    return {
        "generate": ["generate", "--model", str(bundle), "--class", "beep", "--out", str(out)],
        "render": ["render", "--model", str(bundle), "--out", str(out)],
        "demo-data": ["demo-data", str(out)],
        "evaluate": ["evaluate", "--model", str(bundle), "--store", str(out)],
        "run": ["run", "--data-dir", str(out), "--store", str(out / "s")],
    }


@pytest.mark.parametrize("seed", [BIG, "-1", str(SEED.hi + 1), "1.5", "0x10", "", "seven"])
@pytest.mark.parametrize("command", ["generate", "render", "demo-data", "evaluate", "run"])
def test_seed_range_is_the_same_on_every_command(command: str, seed: str, bundle: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = refused(capsys, [*_argvs(bundle, out)[command], "--seed", seed], out, bundle)
    assert line.startswith(f"audio-wgan {command}: error: argument --seed: "), line
    assert f"between 0 and {SEED.hi}" in line


def test_largest_seed_is_taken(bundle: Path, tmp_path: Path) -> None:
    from audio_wgan.cli import main

    out = tmp_path / "g"
    assert main(["generate", "--model", str(bundle), "--class", "beep", "--seed",
                 str(SEED.hi), "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["beep_0.wav"]


@pytest.mark.parametrize("extra, option", [
    (["-n", "513"], "-n/--count"), (["-n", "0"], "-n/--count"),
])
def test_generate_count_range(extra: list[str], option: str, bundle: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = refused(capsys, [*_argvs(bundle, out)["generate"], *extra], out)
    assert f"argument {option}: must be between 1 and 512" in line, line


@pytest.mark.parametrize("extra, reason", [
    (["--griffin-lim-iters", "1000000000"], "--griffin-lim-iters: must be between 1 and 1000"),
    (["--griffin-lim-iters", "0"], "--griffin-lim-iters: must be between 1 and 1000"),
    (["--per-class", "65"], "--per-class: must be between 1 and 64"),
    (["--epoch", "-1"], "--epoch: must be between 0 and"),
])
def test_render_ranges(extra: list[str], reason: str, bundle: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert reason in refused(capsys, [*_argvs(bundle, out)["render"], *extra], out)


@pytest.mark.parametrize("n", ["1000000000", "0", "10001"])
def test_demo_data_clips_per_class_range(n: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    line = refused(capsys, ["demo-data", str(out), "--clips-per-class", n], out)
    assert "--clips-per-class: must be between 1 and 10000" in line


@pytest.mark.parametrize("command", ["generate", "render", "demo-data"])
@pytest.mark.parametrize("where", ["is-the-file", "under-the-file", "deep-under-the-file"])
def test_output_under_a_regular_file_refused_up_front(command: str, where: str, a_file: Path,
                                                       bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out = {"is-the-file": a_file, "under-the-file": a_file / "out",
           "deep-under-the-file": a_file / "x" / "y"}[where]
    line = refused(capsys, _argvs(bundle, out)[command], tmp_path)
    assert f"{a_file} is a regular file" in line, line


def test_precompute_store_under_a_regular_file(a_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    line = refused(capsys, ["precompute", str(data), "--store", str(a_file / "s.zarr")],
                   tmp_path)
    assert line.endswith(f"--store {a_file / 's.zarr'}: {a_file} is a regular file, not a "
                         f"folder"), line


@pytest.mark.parametrize("mel, reason", [
    (["--f-min", "8000", "--f-max", "100"], "f_max must be above f_min"),
    (["--n-mels", "7"], "n_mels (7) and frames (256) must both be divisible by 16"),
    (["--frames", "3"], "must both be divisible by 16"),
    (["--sample-rate", "1000000000"], "mel sample_rate 1000000000 is above the ceiling"),
    (["--n-fft", "0"], "n_fft must be a positive integer"),
    (["--hop-length", "100000"], "mel hop_length 100000 is above the ceiling"),
])
def test_precompute_mel_configuration_refused_before_the_store(
        mel: list[str], reason: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    store = tmp_path / "s.zarr"
    line = refused(capsys, ["precompute", str(data), "--store", str(store), *mel], tmp_path)
    assert line.startswith("audio-wgan precompute: error: mel configuration refused: "), line
    assert reason in line, line
    assert not store.exists()


def test_check_output_dir_names_what_is_in_the_way(a_file: Path, tmp_path: Path) -> None:
    """The function `train` calls before its first epoch (--checkpoint-dir)."""
    assert check_output_dir(tmp_path / "new" / "ck", "--checkpoint-dir") == tmp_path / "new/ck"
    assert not (tmp_path / "new").exists()  # creates nothing
    for bad, reason in ((a_file / "ck", "is a regular file, not a folder"),
                        ("", "must not be empty"), ("x\0y", "holds a NUL byte"),
                        (tmp_path / ("n" * 300) / "ck", "longer than 255 bytes")):
        with pytest.raises(OutputPathError, match=reason):
            check_output_dir(bad, "--checkpoint-dir")
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputPathError, match="is a broken link"):
        check_output_dir(link / "ck", "--checkpoint-dir")


@pytest.mark.parametrize("extra, reason", [
    (["--workers", "1000000000"], "argument --workers: must be between 1 and 1024"),
    (["--workers", "0"], "argument --workers: must be between 1 and 1024"),
    (["--batch-size", str(10**12)], "argument --batch-size: must be between 1 and 65536"),
])
def test_precompute_pool_ranges(extra: list[str], reason: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    line = refused(capsys, ["precompute", str(data), "--store", str(tmp_path / "s"), *extra],
                   tmp_path)
    assert line == f"audio-wgan precompute: error: {reason}, not {extra[1]}", line


@pytest.mark.parametrize("extra, reason", [
    (["--sample-every", "0"], "invalid sample_every: Input should be greater than or equal"),
    (["--epochs", "0"], "invalid epochs: Input should be greater than or equal to 1"),
    (["--batch-size", "100000"], "invalid batch_size: Input should be less than or equal"),
    (["--model-name", "a'b"], "invalid model_name: String should match pattern"),
])
def test_run_checks_training_knobs_before_the_pipeline(extra: list[str], reason: str,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """`run` writes demo data and precomputes before training: its training knobs are
    checked (with the train flow's own parameter model) before any of that."""
    data, store = tmp_path / "demo", tmp_path / "s.zarr"
    line = refused(capsys, ["run", "--data-dir", str(data), "--store", str(store), *extra],
                   tmp_path)
    assert reason in line, line


@pytest.mark.usefixtures("prefect_harness")
def test_more_ranks_than_the_machine_holds_are_refused_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --nproc 64` on a machine of a few cores (no GPU) would start 64 ranks of
    ~340 MB each: refused in one line before the store is read or a rank starts."""
    from gan.devices import nproc_problem, rank_capacity

    have, what = rank_capacity("cpu")
    assert nproc_problem(have, "cpu", False) == "" and nproc_problem(have + 1, "cpu", True) == ""
    import torch

    if not torch.cuda.is_available():  # a device the machine lacks: a reason, not a traceback
        assert "CUDA is not available" in nproc_problem(2, "cuda", False)
    ck = tmp_path / "ck"
    line = refused(capsys, ["train", "--store", str(tmp_path / "none.zarr"), "--device", "cpu",
                            "--nproc", str(have + 1), "--checkpoint-dir", str(ck)], tmp_path)
    assert line == (f"audio-wgan train: error: --nproc {have + 1} asks for more ranks than "
                    f"this machine has {what} ({have}); pass --force-nproc (force_nproc) to "
                    "launch them anyway"), line


@pytest.mark.parametrize("value", ["2", "yes", "-1"])
def test_a_bad_command_server_setting_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        value: str) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("AUDIO_WGAN_COMMAND_SERVER", value)
    line = refused(capsys, ["precompute", str(tmp_path / "d"), "--store",
                            str(tmp_path / "s")], tmp_path)
    assert line == (f"audio-wgan precompute: error: AUDIO_WGAN_COMMAND_SERVER={value!r} is "
                    "not 0 or 1; fix or unset it"), line


def test_a_bad_store_lease_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.store_backend import backend_for
    from storage.store_errors import StoreError

    monkeypatch.setenv("AUDIO_WGAN_STORE_LEASE_S", "nan")
    with pytest.raises(StoreError, match="^AUDIO_WGAN_STORE_LEASE_S='nan' is not a number > 0"):
        backend_for("s3://bucket/prefix/s.zarr")


@pytest.mark.parametrize("action", ["status", "start", "stop"])
def test_a_port_out_of_range_is_refused_for_every_server_action(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str) -> None:
    line = refused(capsys, ["server", action, "--port", "70000"], tmp_path)
    assert line.startswith("audio-wgan server: error: argument --port: must be between 1 "
                           "and 65535"), line
