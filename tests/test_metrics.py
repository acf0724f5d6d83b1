"""Quality metrics on known cases: real data scores near the ceiling, shuffled labels score
chance accuracy, noise scores a large Fréchet distance and many different NDB bins, and a
collapsed generator scores no diversity. Uses a real (tiny) Zarr mel store of three clearly
different synthetic sound classes, written with the store's own writer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from audio_wgan.cli import main
from gan.classifier import split_by_source
from gan.metrics import (
    NDBBins,
    class_accuracy,
    class_diversity,
    frechet_distance,
    inception_score,
)
from gan.models import build_models
from gan.spectral import LogMel, MelConfig, Normaliser
from storage.classifier_cache import FIT, cache_dir, load_or_train_classifier
from storage.mel_store import MelStore
from storage.model_bundle import GeneratorBundle, load_bundle_dir, save_bundle
from storage.store_writer import MelStoreWriter, NewFile
from tasks.evaluate import EvaluationError, evaluate, evaluate_bundle, metric_key

MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}
CLASSES = ("low hum", "high whistle", "noise/bursts")  # odd characters on purpose
FILES_PER_CLASS, ROWS_PER_FILE = 20, 4


def _clip(kind: int, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == 0:
        f = rng.uniform(200, 350)
        x = sum(np.sin(2 * np.pi * f * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
    elif kind == 1:
        f = rng.uniform(2200, 3000)
        x = np.sin(2 * np.pi * f * t) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(3, 8) * t))
    else:
        gate = rng.uniform(size=n // 256 + 1).repeat(256)[:n] > 0.4
        x = rng.standard_normal(n) * gate
    return (x * rng.uniform(0.2, 0.8) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("metrics") / "mels.zarr"
    cfg = MelConfig(**MEL)
    logmel = LogMel(cfg)
    rng = np.random.default_rng(0)
    items = []
    for c, name in enumerate(CLASSES):
        for i in range(FILES_PER_CLASS):
            x = _clip(c, rng, cfg.segment_samples * ROWS_PER_FILE, cfg.sample_rate)
            mels = logmel(torch.from_numpy(x).reshape(ROWS_PER_FILE, -1)).numpy()
            items.append(NewFile(path=f"{name.replace('/', '_')}/{i}.wav", class_name=name,
                                 hash=f"{c}-{i}", size=1, mtime_ns=1,
                                 mels=mels.astype(np.float16),
                                 offsets=np.arange(ROWS_PER_FILE) * cfg.segment_samples))
    writer = MelStoreWriter.create_or_open(path, MEL)
    try:
        writer.append(items)
        writer.finalize()
    finally:
        writer.close()
    return path


class ReplayGenerator(nn.Module):
    """A stand-in 'generator' that returns real training rows of the asked class (normalised),
    picked by the noise: a perfect (memorising) generator. Options break it on purpose."""

    def __init__(self, bank: list[torch.Tensor], mode: str = "replay", noise_dim: int = 8
                 ) -> None:
        super().__init__()
        self.bank, self.mode, self.noise_dim = bank, mode, noise_dim
        self.n_classes = len(bank)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(noise[0, 0].mul(1e6).abs()) % 2**31)
        if self.mode == "shuffled":
            labels = torch.randint(0, self.n_classes, labels.shape, generator=g)
        if self.mode == "noise":
            shape = (len(labels), 1, *self.bank[0].shape[1:])
            return torch.randn(shape, generator=g).clamp(-4, 4)
        out = []
        for z, c in zip(noise, labels.tolist(), strict=True):
            rows = self.bank[c]
            k = 0 if self.mode == "collapsed" else int(z[0].mul(1e4).abs()) % len(rows)
            out.append(rows[k])
        return torch.stack(out).unsqueeze(1)


def _replay_bundle(store_path: Path, mode: str) -> GeneratorBundle:
    store = MelStore.open(store_path)
    judge = load_or_train_classifier(store)
    labels = store.labels()
    norm = Normaliser(*store.stats())
    bank = []
    for c in range(len(store.classes)):
        idx = np.flatnonzero((judge.parts == FIT) & (labels == c))
        bank.append(norm.normalise(torch.from_numpy(store.read_rows(idx).astype(np.float32))))
    return GeneratorBundle(ReplayGenerator(bank, mode), list(store.classes), store.mel_config,
                           norm, "replay")


# --------------------------------------------------------------------------- pure metrics

def test_inception_score_bounds() -> None:
    confident = np.eye(4)[np.arange(40) % 4]
    assert inception_score(confident) == pytest.approx(4.0, rel=1e-6)
    assert inception_score(np.full((40, 4), 0.25)) == pytest.approx(1.0)
    assert inception_score(np.eye(4)[np.zeros(40, dtype=int)]) == pytest.approx(1.0)


def test_frechet_distance_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([3.0, 0.0, 4.0])
    assert frechet_distance(a, shifted) == pytest.approx(25.0, rel=1e-6)
    b = rng.standard_normal((4000, 3)) * 2.0  # cov 4I vs I: 3 * (1 + 4 - 2*2) = 3
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.1)
    # fewer samples than dimensions: singular covariances, still finite and symmetric
    x, y = rng.standard_normal((5, 64)), rng.standard_normal((7, 64)) + 1
    assert math.isfinite(frechet_distance(x, y))
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6)
    assert math.isnan(frechet_distance(x[:1], y))


def test_ndb_same_vs_shifted_distribution() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((6, 10)) * 5
    real = centres[rng.integers(0, 6, 1200)] + rng.standard_normal((1200, 10))
    same = centres[rng.integers(0, 6, 600)] + rng.standard_normal((600, 10))
    one_mode = centres[np.zeros(600, dtype=int)] + rng.standard_normal((600, 10))
    bins = NDBBins.fit(real, k=10, seed=0)
    assert bins.ndb_k(same) <= 0.2
    assert bins.ndb_k(one_mode) >= 0.5


def test_accuracy_and_diversity() -> None:
    probs = np.eye(3)[[0, 0, 1, 2, 2, 2]]
    acc, per = class_accuracy(probs, np.array([0, 1, 1, 2, 2, 0]), 4)
    assert per[:3] == [0.5, 0.5, 1.0] and math.isnan(per[3])
    assert acc == pytest.approx(2 / 3)  # balanced: mean over the classes present
    feats = np.random.default_rng(0).standard_normal((10, 5))
    div = class_diversity(np.vstack([feats, np.ones((10, 5))]), np.repeat([0, 1], 10), 3)
    assert div[0] > 1 and div[1] == 0 and math.isnan(div[2])


def test_split_by_source_keeps_files_whole() -> None:
    sources = [f"c{c}/f{i}.wav" for c in range(3) for i in range(10) for _ in range(3)]
    labels = np.array([int(s[1]) for s in sources])
    parts = split_by_source(sources, labels)
    for src in set(sources):
        assert len({parts[i] for i, s in enumerate(sources) if s == src}) == 1
    for c in range(3):
        assert set(parts[labels == c]) == {0, 1, 2}  # every class in fit, ref and probe
    perm = np.random.default_rng(0).permutation(len(sources))
    again = split_by_source([sources[i] for i in perm], labels[perm])
    assert (again == parts[perm]).all()  # independent of row order
    assert (split_by_source(["a"] * 3, np.zeros(3)) == 0).all()  # one file: nothing held out


# --------------------------------------------------------------------------- on a store

def test_classifier_is_cached_beside_the_store(store_path: Path) -> None:
    store = MelStore.open(store_path)
    first = load_or_train_classifier(store)
    assert first.path.parent == cache_dir(store_path)
    assert not first.path.is_relative_to(store_path.resolve())  # never inside the store
    assert first.meta["heldout_accuracy"] >= 0.9
    again = load_or_train_classifier(MelStore.open(store_path))
    assert again.cached and again.path == first.path
    x = torch.randn(4, 32, 32)
    assert torch.allclose(first.model(x), again.model(x), atol=1e-5)


def test_real_data_scores_near_ceiling(store_path: Path) -> None:
    m = evaluate(_replay_bundle(store_path, "replay"), store_path, n_per_class=16, seed=1)
    assert m["gen_accuracy"] >= 0.9 and m["real_accuracy"] >= 0.9 and m["gl_accuracy"] >= 0.8
    for name in CLASSES:
        assert m[f"gen_accuracy/{metric_key(name)}"] >= 0.8
    assert m["inception_score"] >= 2.5  # 3 classes
    assert m["ndb_k"] <= 0.3 and m["real_ndb_k"] <= 0.3
    assert 0.5 <= m["diversity"] <= 1.5
    assert m["frechet_distance"] < 4 * m["real_frechet_distance"] + 1.0
    assert all(math.isfinite(v) for v in m.values())


def test_broken_generators_score_poorly(store_path: Path) -> None:
    good = evaluate(_replay_bundle(store_path, "replay"), store_path, n_per_class=16, seed=1,
                    ceilings=False)
    shuffled = evaluate(_replay_bundle(store_path, "shuffled"), store_path, n_per_class=16,
                        seed=1, ceilings=False)
    noise = evaluate(_replay_bundle(store_path, "noise"), store_path, n_per_class=32, seed=1,
                     ceilings=False)
    collapsed = evaluate(_replay_bundle(store_path, "collapsed"), store_path, n_per_class=16,
                         seed=1, ceilings=False)
    assert shuffled["gen_accuracy"] <= 0.6  # chance is 1/3
    assert noise["frechet_distance"] > 5 * good["frechet_distance"]
    assert noise["ndb_k"] >= 0.3 and noise["inception_score"] < 1.5
    assert collapsed["diversity"] < 0.1 < good["diversity"]
    assert collapsed["ndb_k"] >= 0.5 > good["ndb_k"]  # one row per class: most bins empty
    assert "real_accuracy" not in noise  # ceilings skipped on request


def test_evaluate_a_real_generator_bundle(store_path: Path, tmp_path: Path) -> None:
    store = MelStore.open(store_path)
    torch.manual_seed(0)
    gen, _ = build_models(len(store.classes), 32, 32, "tiny")
    mean, std = store.stats()
    save_bundle(tmp_path / "bundle", gen.state_dict(), "tiny", store.classes, store.mel_config,
                mean, std, {"epoch": 0})
    bundle = load_bundle_dir(tmp_path / "bundle")
    m = evaluate_bundle.fn(bundle, str(store_path), n_per_class=8, seed=3)
    for key in ("gen_accuracy", "inception_score", "frechet_distance", "ndb_k", "diversity",
                "real_accuracy", "real_frechet_distance", "gl_accuracy", "gl_frechet_distance"):
        assert key in m and math.isfinite(m[key]), key
    assert m["gen_accuracy"] <= 0.7  # an untrained generator
    assert m["real_accuracy"] >= 0.9 and m["frechet_distance"] > m["real_frechet_distance"]
    again = evaluate(bundle, store_path, n_per_class=8, seed=3)
    assert {k: v for k, v in again.items() if k != "eval_seconds"} == \
        {k: v for k, v in m.items() if k != "eval_seconds"}  # deterministic


def test_evaluate_cli_output_and_bad_input(store_path: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = MelStore.open(store_path)
    gen, _ = build_models(len(store.classes), 32, 32, "tiny")
    mean, std = store.stats()
    bundle_dir = save_bundle(tmp_path / "b", gen.state_dict(), "tiny", store.classes,
                             store.mel_config, mean, std)
    assert main(["evaluate", "--model", str(bundle_dir), "--store", str(store_path),
                 "--n-per-class", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"gen_accuracy", "frechet_distance", "real_ndb_k", "gl_diversity"} <= set(data)
    assert main(["evaluate", "--model", str(bundle_dir), "--store", str(store_path),
                 "--n-per-class", "4"]) == 0
    table = capsys.readouterr().out
    assert "frechet_distance" in table and "griffin-lim" in table

    assert main(["evaluate", "--model", str(bundle_dir), "--store",
                 str(tmp_path / "nope.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress line
    assert err.startswith("audio-wgan evaluate: error: no mel store")
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--store",
                 str(store_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("audio-wgan evaluate: error: ") and "missing" in err and "\n" not in err

    # a model made for another mel configuration or other classes is refused, one line
    other = MelConfig(**{**MEL, "sample_rate": 16000})
    odd = save_bundle(tmp_path / "odd", gen.state_dict(), "tiny", store.classes, other, mean, std)
    with pytest.raises(EvaluationError, match="mel config"):
        evaluate(load_bundle_dir(odd), store_path)
    names = ["low hum", "high whistle", "cat"]
    cat = save_bundle(tmp_path / "cat", gen.state_dict(), "tiny", names, store.mel_config,
                      mean, std)
    assert main(["evaluate", "--model", str(cat), "--store", str(store_path)]) == 2
    assert "'cat'" in capsys.readouterr().err


def test_training_never_sees_the_rows_evaluation_holds_out(store_path: Path) -> None:
    from storage.classifier_cache import PROBE, REF
    from tasks.train_data import open_training_data, training_rows

    store = MelStore.open(store_path)
    parts = load_or_train_classifier(store).parts  # what `evaluate` compares with
    held = set(np.flatnonzero((parts == REF) | (parts == PROBE)).tolist())
    trained = set(training_rows(store).tolist())
    assert held and trained and not held & trained
    assert len(held) + len(trained) == len(store)
    sources = store.row_sources()
    assert not {sources[i] for i in held} & {sources[i] for i in trained}  # whole files
    data = open_training_data(str(store_path), batch_size=8, seed=0)
    assert data.rows == len(trained) and data.info["held_out_rows"] == len(held)
    assert len(data.data) == len(trained)


def test_evaluate_help_says_its_real_rows_are_never_trained_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    try:
        assert main(["evaluate", "--help"]) == 0
    except SystemExit as exc:  # argparse's own exit
        assert exc.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "never trains on" in text and "no evaluation row is a row the model saw" in text
