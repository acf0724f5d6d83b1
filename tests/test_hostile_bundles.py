"""Tampered, truncated or oversized model bundles are refused in one line, before anything
is allocated or written, by every command that loads one (generate, render, evaluate) and
by the served model's load path."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hostile_checks import refused
from registry_fixtures import make_bundle

from storage.model_bundle import META_FILE, WEIGHTS_FILE, BundleError, load_bundle_dir


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("good") / "bundle")


def _doc(d: Path, change: Callable[[dict], object]) -> None:
    doc = json.loads((d / META_FILE).read_text())
    change(doc)
    (d / META_FILE).write_text(json.dumps(doc))


def _state(d: Path, change: Callable[[dict], object]) -> None:
    state = torch.load(d / WEIGHTS_FILE, weights_only=True)
    change(state)
    torch.save(state, d / WEIGHTS_FILE)


def _huge_mels(doc: dict) -> None:
    doc["mel"].update(n_mels=65536, frames=65536, n_fft=262144)
    doc.update(n_mels=65536, frames=65536)


def _pickle(d: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (shutil.rmtree, (str(d.parent),))  # would delete the test folder

    size = (d / WEIGHTS_FILE).stat().st_size
    blob = pickle.dumps({"w": Payload()})
    (d / WEIGHTS_FILE).write_bytes(blob + b"\0" * max(0, size - len(blob)))


def _nan(state: dict) -> None:
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))


def _truncate(d: Path, keep: float) -> None:
    raw = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(raw[: int(len(raw) * keep)])


TAMPERING: dict[str, tuple[Callable[[Path], object], str]] = {
    "huge-mels": (lambda d: _doc(d, _huge_mels),
                  "model.json: mel n_fft 262144 is above the ceiling"),
    "malformed-json": (lambda d: (d / META_FILE).write_text('{"preset": "tiny", '),
                       "model.json: Invalid JSON"),
    "json-not-object": (lambda d: (d / META_FILE).write_text("[1, 2]"), "model.json: "),
    "missing-class-names": (lambda d: _doc(d, lambda x: x.pop("class_names")),
                            "model.json: class_names: Field required"),
    "string-n-mels": (lambda d: _doc(d, lambda x: x.update(n_mels="32")),
                      "model.json: n_mels: Input should be a valid integer"),
    "unknown-preset": (lambda d: _doc(d, lambda x: x.update(preset="giant")),
                       "model.json: preset: unknown preset 'giant'"),
    "stats-too-short": (lambda d: _doc(d, lambda x: x["norm_mean"].pop()),
                        "norm_mean has 31 values for 32 mel bands"),
    "nan-stats": (lambda d: (d / META_FILE).write_text(
        (d / META_FILE).read_text().replace('"norm_std": [', '"norm_std": [NaN, ', 1)),
        "model.json: norm_std"),
    "future-format": (lambda d: _doc(d, lambda x: x.update(format_version=99)),
                      "format_version 99 is not 1"),
    "wrong-class-count": (lambda d: _doc(d, lambda x: x.update(class_names=["a", "b"])),
                          "embed.weight has shape (3, 16), the declared architecture needs "
                          "(2, 16)"),
    "truncated-weights": (lambda d: _truncate(d, 0.5), "generator.pt is "),
    "slightly-truncated": (lambda d: _truncate(d, 0.97),
                           "generator.pt is damaged or not a torch weights file"),
    "pickle-payload": (_pickle, "generator.pt holds pickled objects, not only tensors"),
    "missing-key": (lambda d: _state(d, lambda s: s.pop("embed.weight")),
                    "missing embed.weight"),
    "renamed-key": (lambda d: _state(d, lambda s: s.update(extra=s.pop("embed.weight"))),
                    "unexpected extra"),
    "nan-weights": (lambda d: _state(d, _nan), "holds NaN or infinite weights"),
    "int-weights": (lambda d: _state(d, lambda s: s.update(
        {"embed.weight": s["embed.weight"].long()})), "embed.weight is torch.int64"),
    "no-weights-file": (lambda d: (d / WEIGHTS_FILE).unlink(), "is not a generator bundle"),
}


@pytest.fixture(params=sorted(TAMPERING))
def tampered(request: pytest.FixtureRequest, good_bundle: Path, tmp_path: Path
             ) -> tuple[Path, str]:
    d = tmp_path / "bundle"
    shutil.copytree(good_bundle, d)
    change, reason = TAMPERING[request.param]
    change(d)
    return d, reason


def test_load_refuses_tampered_bundle_in_one_line(tampered: tuple[Path, str]) -> None:
    d, reason = tampered
    with pytest.raises((BundleError, FileNotFoundError)) as err:
        load_bundle_dir(d)
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert d.parent.is_dir()  # the pickle's payload never ran


def test_every_command_refuses_tampered_bundle(tampered: tuple[Path, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d, reason = tampered
    out = tmp_path / "out"
    for argv in (["generate", "--model", str(d), "--class", "beep", "--out", str(out)],
                 ["render", "--model", str(d), "--out", str(out)],
                 ["evaluate", "--model", str(d), "--store", str(tmp_path / "store")]):
        line = refused(capsys, argv, out, d, tmp_path / "store")
        assert line.startswith(f"audio-wgan {argv[0]}: error: cannot load model"), line
        assert reason in line, (argv[0], line)


def test_served_model_refuses_tampered_bundle(tampered: tuple[Path, str]) -> None:
    from mlflow.pyfunc import PythonModelContext

    from storage.pyfunc_generator import AudioWGANModel

    d, reason = tampered
    with pytest.raises((BundleError, FileNotFoundError), match="") as err:
        AudioWGANModel().load_context(PythonModelContext({"bundle": str(d)}, {}))
    assert reason in str(err.value)


def test_untouched_bundle_still_generates(good_bundle: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    assert main(["generate", "--model", str(good_bundle), "--class", "beep", "-n", "2",
                 "--out", str(tmp_path / "g")]) == 0
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["beep_0.wav", "beep_1.wav"]


@pytest.mark.parametrize("uri, reason", [
    ("http://127.0.0.1:1/x", "model URI 'http://127.0.0.1:1/x' is not supported"),
    ("ftp://host/model", "is not supported"),
    ("models:/", "is not supported"),
    ("models:/a/b/c", "is not supported"),
    ("runs:/", "is not supported"),
    ("no/such/folder", "no such folder"),
    ("", "is empty or malformed"),
    # accepted forms whose store client fails its own way (botocore, before any network)
    ("s3://", "cannot load model s3://: ParamValidationError: "),
    ("models:/no-such-model@champion", "cannot load model models:/no-such-model@champion: "),
])
def test_model_uri_refused_in_one_line(uri: str, reason: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from registry_fixtures import fresh_mlflow

    fresh_mlflow(tmp_path, monkeypatch)
    out = tmp_path / "out"
    line = refused(capsys, ["generate", "--model", uri, "--class", "x", "--out", str(out)],
                   out)
    assert reason in line, line


def test_saving_refuses_what_loading_would(tmp_path: Path) -> None:
    """save_bundle checks the same schema first, so a saved bundle always loads."""
    from registry_fixtures import TINY_MEL

    from gan.models import build_models
    from storage.model_bundle import save_bundle

    gen, _ = build_models(3, TINY_MEL.n_mels, TINY_MEL.frames, "tiny")
    state = gen.state_dict()
    state["embed.weight"] = state["embed.weight"].clone().fill_(float("inf"))
    with pytest.raises(BundleError, match="NaN or infinite"):
        save_bundle(tmp_path / "b", state, "tiny", ["a", "b", "c"], TINY_MEL,
                    [0.0] * 32, [1.0] * 32)
    with pytest.raises(BundleError, match="norm_std has 2 values"):
        save_bundle(tmp_path / "b", gen.state_dict(), "tiny", ["a", "b", "c"], TINY_MEL,
                    [0.0] * 32, [1.0] * 2)
    assert not (tmp_path / "b").exists()


def test_finite_weights_that_compute_nan_are_refused(good_bundle: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """A negative BatchNorm variance is finite, and makes every clip NaN (silence or -1)."""
    d = tmp_path / "bundle"
    shutil.copytree(good_bundle, d)
    _state(d, lambda s: s["project.1.running_var"].fill_(-1.0))
    out = tmp_path / "out"
    line = refused(capsys, ["generate", "--model", str(d), "--class", "beep", "--out",
                            str(out)], out, d)
    assert "the generator computes non-finite values" in line, line


def test_older_bundle_mel_configs_still_load(good_bundle: Path, tmp_path: Path) -> None:
    """A model.json from before the pad/tail policies (and with a field this version no
    longer has) reads as MelConfig.from_dict reads a store's config."""
    from gan.spectral import LEGACY_POLICIES

    d = tmp_path / "bundle"
    shutil.copytree(good_bundle, d)

    def old(doc: dict) -> None:
        for k in LEGACY_POLICIES:
            doc["mel"].pop(k, None)
        doc["mel"]["retired_field"] = 1

    _doc(d, old)
    mel = load_bundle_dir(d).mel
    assert {k: getattr(mel, k) for k in LEGACY_POLICIES} == LEGACY_POLICIES


def test_a_link_planted_in_a_bundle_folder_is_replaced_not_written_through(
        tmp_path: Path) -> None:
    from registry_fixtures import make_bundle

    from storage.model_bundle import META_FILE, WEIGHTS_FILE

    out = make_bundle(tmp_path / "bundle")
    victims = {}
    for name in (META_FILE, WEIGHTS_FILE):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious\n")
        (out / name).unlink()
        (out / name).symlink_to(victim)
        victims[name] = victim
    make_bundle(tmp_path / "bundle")  # written again over the planted links
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n"
        assert (out / name).is_file() and not (out / name).is_symlink()
