"""What a generator bundle may hold, checked before anything is allocated.

A bundle (`model.json` + `generator.pt`) can come from anywhere: a registry, a colleague,
a tampered folder. Loading it goes through three gates, each with a one-line reason:

1. `model.json` (at most MAX_META_BYTES) against the `BundleDoc` schema: types strict,
   the mel configuration validated by `gan.spectral.MelConfig` itself and within the
   ceilings of `gan.limits`, statistics finite and one per mel band;
2. the architecture it declares, built on PyTorch's "meta" device (shapes only, no
   memory), gives the parameter count and the expected state_dict; `generator.pt` must be
   about that size, so it is never read when it could not be the declared model;
3. the state_dict (read with `weights_only=True`) must have exactly the expected keys,
   shapes and dtypes, and finite floating values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from torch.overrides import TorchFunctionMode

from gan.limits import EPOCH, MAX_CLASS_NAME, check_trainable_mel
from gan.models import PRESETS, Generator, get_preset
from gan.spectral import LEGACY_POLICIES, MelConfig

FORMAT_VERSION = 1
MAX_META_BYTES = 8 << 20  # model.json: class names and two statistics per mel band
MAX_CLASSES = 10_000
MAX_GENERATOR_PARAMS = 1 << 28  # 1 GiB of float32 weights; the seed preset has ~10.7 M
WEIGHTS_SLACK_BYTES = 1 << 20  # torch.save's zip framing around the raw tensor bytes


class BundleError(ValueError):
    """A bundle that cannot be the model it claims to be; the message is one line."""


ClassName = Annotated[str, Field(min_length=1, max_length=MAX_CLASS_NAME)]
# statistics of log-mels in dB: finite, and small enough for float32 arithmetic
DbFloat = Annotated[float, Field(allow_inf_nan=False, ge=-1e4, le=1e4)]


class BundleMeta(BaseModel):
    """Free-form training facts; the few that code reads are typed."""

    model_config = ConfigDict(extra="allow", strict=True)
    epoch: int = Field(0, ge=0, le=EPOCH.hi)
    step: int = Field(0, ge=0, le=10**15)


class BundleDoc(BaseModel):
    """The schema of model.json (written by `storage.model_bundle.save_bundle`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format_version: int
    preset: str
    class_names: list[ClassName] = Field(min_length=1, max_length=MAX_CLASSES)
    mel: MelConfig
    n_mels: int
    frames: int
    norm_mean: list[DbFloat]
    norm_std: list[DbFloat]
    meta: BundleMeta = Field(default_factory=BundleMeta)

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(f"format_version {v} is not {FORMAT_VERSION} (made by another "
                             f"audio-wgan version)")
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v[:40]!r} (known: {', '.join(sorted(PRESETS))})")
        return v

    @field_validator("mel", mode="before")
    @classmethod
    def _legacy_policies(cls, v: Any) -> Any:
        # as MelConfig.from_dict reads a saved config: a policy it does not name is the one
        # used before the policy existed, a field this version no longer has is dropped
        if not isinstance(v, dict):
            return v
        names = {f.name for f in dataclasses.fields(MelConfig)}
        return {**LEGACY_POLICIES, **{k: x for k, x in v.items() if k in names}}

    @field_validator("class_names")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("class names repeat")
        for name in v:  # names become file and folder names when rendering
            if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > 240:
                raise ValueError(f"class name {name[:40]!r} holds a NUL byte or is over "
                                 f"240 bytes")
        return v

    @field_validator("norm_std")
    @classmethod
    def _not_negative(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("a std is negative")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> BundleDoc:
        m = self.mel
        if (self.n_mels, self.frames) != (m.n_mels, m.frames):
            raise ValueError(f"n_mels/frames ({self.n_mels}x{self.frames}) differ from the "
                             f"mel config ({m.n_mels}x{m.frames})")
        check_trainable_mel(m)
        for name in ("norm_mean", "norm_std"):
            if len(getattr(self, name)) != m.n_mels:
                raise ValueError(f"{name} has {len(getattr(self, name))} values for "
                                 f"{m.n_mels} mel bands")
        return self


def parse_doc(raw: bytes, source: str = "model.json") -> BundleDoc:
    """Validate model.json's bytes; BundleError names the first field that is wrong."""
    if len(raw) > MAX_META_BYTES:
        raise BundleError(f"{source} is {len(raw)} bytes, above the ceiling {MAX_META_BYTES}")
    try:
        return BundleDoc.model_validate_json(raw)
    except ValidationError as exc:
        raise BundleError(f"{source}: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """pydantic's first error as one short line: `field.path: message`."""
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = " ".join(str(err["msg"]).split()).removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] != "value_error" and isinstance(got, int | float | str | bool | None):
        msg += f" (got {repr(got)[:40]})"
    text = f"{loc}: {msg}" if loc else msg
    return text if len(text) <= 300 else text[:297] + "..."


def expected_state(doc: BundleDoc) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of the declared generator's state_dict, built on the meta
    device (no memory); BundleError when it has more than MAX_GENERATOR_PARAMS."""
    with torch.device("meta"), _ShapesOnly():
        gen = Generator(len(doc.class_names), doc.mel.n_mels, doc.mel.frames,
                        get_preset(doc.preset))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in gen.state_dict().items()}
    n = sum(math.prod(s) for s, _ in shapes.values())
    if n > MAX_GENERATOR_PARAMS:
        raise BundleError(f"the declared generator ({doc.preset}, {len(doc.class_names)} "
                          f"classes, {doc.mel.n_mels}x{doc.mel.frames}) has {n} values, "
                          f"above the ceiling {MAX_GENERATOR_PARAMS}")
    return shapes


class _ShapesOnly(TorchFunctionMode):
    """Skip random initialisation while a model is built on the meta device: only shapes
    are wanted, and `normal_` on meta tensors imports torch._dynamo (seconds) to run."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        if func in (torch.nn.init.normal_, torch.Tensor.normal_):
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


def expected_bytes(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Raw tensor bytes of a state_dict with these shapes (what torch.save stores)."""
    return sum(math.prod(s) * torch.empty(0, dtype=d).element_size() for s, d in shapes.values())


def check_weights_size(size: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                       source: str = "generator.pt") -> None:
    """Refuse a weights file that cannot hold the declared model, before reading it."""
    need = expected_bytes(shapes)
    if size < need or size > need + need // 8 + WEIGHTS_SLACK_BYTES:
        raise BundleError(f"{source} is {size} bytes; the declared generator needs about "
                          f"{need} (truncated, or weights of another model)")


def check_state(state: Any, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                source: str = "generator.pt") -> dict[str, torch.Tensor]:
    """The state_dict when its keys, shapes, dtypes and values fit the declared model."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise BundleError(f"{source} is not a state_dict (a mapping of names to tensors)")
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise BundleError(f"{source} does not match the declared architecture: "
                          f"{'; '.join(parts)}")
    for key, (shape, dtype) in shapes.items():
        t = state[key]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise BundleError(f"{source}: {key} is not a dense tensor")
        if tuple(t.shape) != shape:
            raise BundleError(f"{source}: {key} has shape {tuple(t.shape)}, the declared "
                              f"architecture needs {shape}")
        if t.dtype != dtype:
            raise BundleError(f"{source}: {key} is {t.dtype}, expected {dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{source}: {key} holds NaN or infinite weights")
    return state
