"""Rendering: the seed's file layout, wavs at the store rate without clipping, the same
latents at every epoch, a gallery that lists every epoch, the loss curve, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_wgan.cli import main
from gan.models import build_models
from gan.spectral import MelConfig, Normaliser
from report.gallery import build_gallery_html, epoch_tag, safe_dirname
from report.plots import plot_loss_curve
from storage.model_bundle import load_bundle_dir, save_bundle
from tasks.render import render, render_markdown, render_samples

CFG = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
NAMES = ["dog_bark", "siren"]


@pytest.fixture
def model() -> tuple[torch.nn.Module, Normaliser]:
    torch.manual_seed(0)
    gen, _ = build_models(len(NAMES), CFG.n_mels, CFG.frames, "tiny")
    norm = Normaliser(torch.linspace(-60, -20, CFG.n_mels), torch.full((CFG.n_mels,), 10.0))
    return gen, norm


def test_layout_audio_and_determinism(model: tuple, tmp_path: Path) -> None:
    gen, norm = model
    gen.train()  # as during training: rendering must not leave it in eval mode
    history = [{"step": s, "critic_loss": -s / 10, "generator_loss": s / 7} for s in range(20)]
    paths = render_samples.fn(gen, NAMES, CFG, norm, tmp_path / "samples", epoch=20,
                              per_class=3, griffin_lim_iters=8, history=history)
    assert gen.training
    root = tmp_path / "samples"
    assert Path(paths["grid"]) == root / "epoch_020.png"
    assert (root / "loss_curve.png").is_file() and paths["loss_curve"]
    assert (root / "index.html").is_file()
    expected = [root / "gan_generated_audio" / c / f"epoch_020_{k}.wav"
                for c in NAMES for k in range(3)]
    assert [Path(p) for p in paths["audio"]] == expected
    for p in expected:
        wave, sr = sf.read(p, dtype="float32")
        assert sr == CFG.sample_rate and wave.ndim == 1
        assert len(wave) == CFG.segment_samples
        assert 0.9 <= np.abs(wave).max() <= 0.951  # peak-normalised, never clipped
    assert all(Path(p).is_file() for p in paths["files"])

    # the same latents at every epoch: an unchanged generator renders the same clips
    again = render(gen, NAMES, CFG, norm, tmp_path / "samples", epoch=40, per_class=3,
                   griffin_lim_iters=8)
    for a, b in zip(paths["audio"], again["audio"], strict=True):
        assert np.array_equal(sf.read(a)[0], sf.read(b)[0])
    html = (root / "index.html").read_text(encoding="utf-8")
    assert html.index("epoch_040.png") < html.index("epoch_020.png")  # newest first, both kept
    assert html.count("<audio controls") == 12
    assert not re.search(r'(src|href)="(/|[a-z]+:)', html)  # relative links only

    md = render_markdown(again)
    assert "epoch 40" in md and str(root / "index.html") in md


def test_render_a_bundle_with_odd_class_names(model: tuple, tmp_path: Path) -> None:
    gen, norm = model
    names = ["sirène #2", "a/b"]
    save_bundle(tmp_path / "bundle", gen.state_dict(), "tiny", names, CFG,
                norm.mean.ravel(), norm.std.ravel(), {"epoch": 7})
    bundle = load_bundle_dir(tmp_path / "bundle")
    paths = render(bundle, out_dir=tmp_path / "out", epoch=7, per_class=1, griffin_lim_iters=4)
    assert [Path(p).parent.name for p in paths["audio"]] == ["sirène #2", "a_b"]
    html = build_gallery_html(tmp_path / "out")
    assert "sir%C3%A8ne%20%232/epoch_007_0.wav" in html and "sirène #2" in html
    manifest = json.loads((tmp_path / "out" / "gallery.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in manifest["classes"]] == names


def test_bad_render_input(model: tuple, tmp_path: Path) -> None:
    gen, norm = model
    with pytest.raises(ValueError, match="class_names"):
        render(gen, out_dir=tmp_path)
    with pytest.raises(ValueError, match="per_class"):
        render(gen, NAMES, CFG, norm, tmp_path, per_class=0)
    with pytest.raises(ValueError, match="class names"):
        render(gen, ["only one"], CFG, norm, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written on bad input


def test_helpers() -> None:
    assert epoch_tag(20) == "epoch_020" and epoch_tag(1200) == "epoch_1200"
    assert safe_dirname("../x", 0) == "_x" and safe_dirname("..", 3) == "class_3"
    assert plot_loss_curve([], "unused.png") is None


def test_loss_curve_by_epoch(tmp_path: Path) -> None:
    hist = [{"epoch": e, "critic_loss": -1.0 / e, "wasserstein": 2.0 / e, "note": "x"}
            for e in range(1, 6)]
    out = plot_loss_curve(hist, tmp_path / "loss.png")
    assert out is not None and out.stat().st_size > 1000


def test_render_cli(model: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen, norm = model
    bundle = save_bundle(tmp_path / "bundle", gen.state_dict(), "tiny", NAMES, CFG,
                         norm.mean.ravel(), norm.std.ravel(), {"epoch": 5})
    out = tmp_path / "rendered"
    assert main(["render", "--model", str(bundle), "--out", str(out), "--per-class", "2",
                 "--seed", "7", "--griffin-lim-iters", "4"]) == 0
    assert (out / "epoch_005.png").is_file() and (out / "index.html").is_file()
    assert len(list((out / "gan_generated_audio").glob("*/epoch_005_*.wav"))) == 4
    assert "gallery:" in capsys.readouterr().out

    assert main(["render", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("audio-wgan render: error: ") and "nope" in err and "\n" not in err
    assert main(["render", "--model", str(bundle), "--per-class", "0"]) == 2


@pytest.mark.integration
def test_render_task_in_a_flow_makes_an_artifact(model: tuple, tmp_path: Path,
                                                 prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    gen, norm = model
    bundle = load_bundle_dir(save_bundle(tmp_path / "bundle", gen.state_dict(), "tiny", NAMES,
                                         CFG, norm.mean.ravel(), norm.std.ravel()))

    @flow
    def render_flow() -> tuple[dict, dict]:
        a = render_samples(gen, NAMES, CFG, norm, tmp_path / "s", epoch=1, per_class=1,
                           griffin_lim_iters=2)
        b = render_samples(bundle, out_dir=tmp_path / "s", epoch=2, per_class=1,
                           griffin_lim_iters=2)
        return a, b

    first, paths = render_flow()
    assert Path(paths["gallery"]).is_file() and first["gallery"] == paths["gallery"]
    assert np.array_equal(sf.read(first["audio"][0])[0], sf.read(paths["audio"][0])[0])
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["render-samples"])))
    assert any(paths["gallery"] in str(a.data) for a in arts)


def test_a_model_of_many_classes_renders_a_bounded_picture(tmp_path: Path) -> None:
    """300 classes: the grid, the clips and the gallery hold at most MAX_RENDER_CLASSES
    classes and MAX_GRID_CELLS clips, and say how many of how many classes they show."""
    from registry_fixtures import make_bundle

    from tasks.render import MAX_GRID_CELLS, MAX_RENDER_CLASSES

    names = [f"c{i:03d}" for i in range(300)]
    bundle = load_bundle_dir(make_bundle(tmp_path / "b", classes=names))
    out = render(bundle, out_dir=tmp_path / "samples", per_class=64, griffin_lim_iters=1)
    assert out["classes_rendered"] == [MAX_RENDER_CLASSES, 300]
    assert len(out["audio"]) == MAX_GRID_CELLS // MAX_RENDER_CLASSES * MAX_RENDER_CLASSES
    assert Path(out["grid"]).stat().st_size > 0
