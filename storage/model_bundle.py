"""A trained generator on disk: weights as a state_dict plus plain-JSON metadata.

This is the payload of a registered model (and of `render`/`generate`): loading it uses
`torch.load(weights_only=True)` and `json`, so it never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan.limits import CLIPS, SEED
from gan.models import Generator, get_preset
from gan.sampling import class_index, make_noise, mels_to_audio, sample_db
from gan.spectral import MelConfig, MelInverter, Normaliser
from storage.atomic_files import atomic_write, atomic_write_bytes
from storage.bundle_schema import (
    FORMAT_VERSION,
    MAX_META_BYTES,
    BundleError,
    check_state,
    check_weights_size,
    expected_state,
    parse_doc,
)

WEIGHTS_FILE = "generator.pt"
META_FILE = "model.json"
__all__ = ["BundleError", "FORMAT_VERSION", "GeneratorBundle", "load_bundle_dir", "save_bundle",
           "synthesise"]


@dataclass
class GeneratorBundle:
    """Everything needed to turn (class, seed) into audio."""

    generator: Generator
    class_names: list[str]
    mel: MelConfig
    normaliser: Normaliser
    preset: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_dim(self) -> int:
        return self.generator.noise_dim


def save_bundle(out_dir: str | Path, generator_state: dict[str, torch.Tensor], preset: str,
                class_names: list[str], mel: MelConfig, mean: np.ndarray | torch.Tensor,
                std: np.ndarray | torch.Tensor, meta: dict[str, Any] | None = None) -> Path:
    """Write generator.pt (state_dict, CPU tensors) and model.json into out_dir.

    The bundle passes the same checks as `load_bundle_dir` before anything is written
    (BundleError otherwise), so a saved bundle always loads.
    """
    state = {k: v.detach().cpu().clone() for k, v in generator_state.items()}
    doc = {
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "class_names": list(class_names),
        "mel": mel.to_dict(),
        "n_mels": mel.n_mels,
        "frames": mel.frames,
        "norm_mean": [float(x) for x in np.asarray(mean, dtype=np.float64).ravel()],
        "norm_std": [float(x) for x in np.asarray(std, dtype=np.float64).ravel()],
        "meta": meta or {},
    }
    text = json.dumps(doc, indent=2, default=_json_default)
    check_state(state, expected_state(parse_doc(text.encode(), META_FILE)), "generator")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # each file whole or absent, and never written through a link planted in its place
    atomic_write(out / WEIGHTS_FILE, lambda f: torch.save(state, f))
    atomic_write_bytes(out / META_FILE, text.encode())
    return out


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays in `meta` as plain numbers and lists."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def load_bundle_dir(path: str | Path, device: str | torch.device = "cpu") -> GeneratorBundle:
    """Rebuild the EMA generator (eval mode) from a bundle directory.

    Every check of `storage.bundle_schema` runs before the generator is allocated or the
    weights are read; any problem is a BundleError with a one-line reason.
    """
    p = Path(path)
    meta_path, weights_path = p / META_FILE, p / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{p} is not a generator bundle (no {META_FILE}/{WEIGHTS_FILE})")
    doc = parse_doc(_read_bounded(meta_path, MAX_META_BYTES), META_FILE)
    shapes = expected_state(doc)
    check_weights_size(weights_path.stat().st_size, shapes, WEIGHTS_FILE)
    state = check_state(_load_weights(weights_path), shapes, WEIGHTS_FILE)
    gen = Generator(len(doc.class_names), doc.mel.n_mels, doc.mel.frames,
                    get_preset(doc.preset))
    gen.load_state_dict(state)
    gen.to(device).eval()
    normaliser = Normaliser(torch.tensor(doc.norm_mean), torch.tensor(doc.norm_std))
    _probe(gen, normaliser)
    return GeneratorBundle(gen, list(doc.class_names), doc.mel, normaliser, doc.preset,
                           doc.meta.model_dump())


def _probe(gen: Generator, normaliser: Normaliser) -> None:
    """One latent through the generator: finite weights can still give NaN (a negative
    BatchNorm variance), and a broken model must be refused, not rendered as silence."""
    labels = torch.zeros(1, dtype=torch.long)
    db = sample_db(gen, normaliser, labels, make_noise(1, gen.noise_dim, 0))
    if not bool(torch.isfinite(db).all()):
        raise BundleError(f"{WEIGHTS_FILE}: the generator computes non-finite values (e.g. a "
                          f"negative BatchNorm variance)")


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most limit + 1 bytes (enough for parse_doc to refuse a bigger file)."""
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise BundleError(f"{path.name}: unreadable ({exc.strerror or exc})") from None


def _load_weights(path: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain containers only, never objects.

    Whatever torch says about a file it cannot read (including its hint to retry without
    weights_only) is replaced by one line of ours.
    """
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BundleError(f"{path.name} holds pickled objects, not only tensors; refused "
                          f"without unpickling them") from None
    except Exception as exc:  # noqa: BLE001 - torch reports damaged files many ways
        kind = type(exc).__name__
        raise BundleError(f"{path.name} is damaged or not a torch weights file "
                          f"({kind})") from None


MAX_CLIPS_PER_REQUEST = CLIPS.hi  # keeps one call's spectrograms and audio inside memory


def synthesise(bundle: GeneratorBundle, class_name: str, count: int = 1, seed: int = 0,
               inverter: MelInverter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` clips of one class -> (waves (count, T) peak-normalised, dB mels).

    The one code path behind `generate`, the served pyfunc model and anything else that
    turns (class, seed) into audio, so the same seed gives the same clip everywhere.
    """
    count, seed = CLIPS.check(count), SEED.check(seed)  # RangeError is a ValueError
    label = class_index(bundle.class_names, class_name)
    noise = make_noise(count, bundle.noise_dim, seed)
    labels = torch.full((count,), label, dtype=torch.long)
    db = sample_db(bundle.generator, bundle.normaliser, labels, noise)
    if not bool(torch.isfinite(db).all()):  # e.g. a negative BatchNorm variance in the weights
        raise BundleError("the model produced non-finite spectrograms; its weights are broken")
    waves = mels_to_audio(db, inverter or MelInverter(bundle.mel))
    return waves, db
