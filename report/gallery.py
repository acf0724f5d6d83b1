"""A static HTML gallery of a run's samples: opens from disk, no server, no JavaScript needed.

The page is rebuilt from what is on disk (plus a small `gallery.json` holding the class order)
at every render, so it always lists every epoch rendered so far, also after a resume.
All links are relative and URL-quoted, so the folder can be moved, zipped or logged to
MLflow as artifacts and still work.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from storage.atomic_files import atomic_write_bytes

GALLERY_FILE = "index.html"
MANIFEST_FILE = "gallery.json"
AUDIO_DIR = "gan_generated_audio"  # the seed's folder name
THUMB_DIR = "spectrograms"
REAL_AUDIO_DIR = "real_audio"  # real rows of the store, through the same inversion
REAL_THUMB_DIR = "real_spectrograms"
LOSS_CURVE = "loss_curve.png"
_GRID_RE = re.compile(r"^epoch_(\d+)\.png$")
_CLIP_RE = re.compile(r"^epoch_(\d+)_(\d+)\.wav$")
_REAL_RE = re.compile(r"^real_(\d+)\.wav$")


def epoch_tag(epoch: int) -> str:
    """`epoch_020`: the seed's file naming (zero-padded to 3 digits, more when needed)."""
    return f"epoch_{int(epoch):03d}"


def safe_dirname(name: str, index: int) -> str:
    """A class name usable as one path component (class names come from folder names)."""
    cleaned = name.replace("/", "_").replace("\\", "_").replace("\x00", "").strip()
    cleaned = cleaned.lstrip(".")
    return cleaned or f"class_{index}"


@dataclass
class GalleryManifest:
    """Class order and display names; everything else is discovered on disk."""

    title: str = "audio-wgan samples"
    classes: list[dict[str, str]] = field(default_factory=list)  # [{"name", "dir"}]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, samples_dir: Path) -> GalleryManifest:
        p = samples_dir / MANIFEST_FILE
        if not p.is_file():
            return cls()
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            return cls(d.get("title", cls.title), list(d.get("classes", [])),
                       dict(d.get("info", {})))
        except (ValueError, OSError):
            return cls()

    def write(self, samples_dir: Path) -> Path:
        doc = {"title": self.title, "classes": self.classes, "info": self.info}
        return _atomic_write(samples_dir / MANIFEST_FILE,
                             json.dumps(doc, indent=2, ensure_ascii=False))


def _atomic_write(path: Path, text: str) -> Path:
    """Temp file + rename, so a browser reload never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, text.encode("utf-8"))


def _url(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


def _epochs_on_disk(samples_dir: Path) -> list[int]:
    found = {int(m.group(1)) for p in samples_dir.glob("epoch_*.png")
             if (m := _GRID_RE.match(p.name))}
    audio = samples_dir / AUDIO_DIR
    if audio.is_dir():
        found |= {int(m.group(1)) for p in audio.glob("*/epoch_*_*.wav")
                  if (m := _CLIP_RE.match(p.name))}
    return sorted(found)


def _class_dirs(samples_dir: Path, manifest: GalleryManifest) -> list[tuple[str, str]]:
    """(display name, folder) in the model's class order; unknown folders appended, sorted."""
    out = [(c["name"], c["dir"]) for c in manifest.classes if "name" in c and "dir" in c]
    known = {d for _, d in out}
    audio = samples_dir / AUDIO_DIR
    if audio.is_dir():
        out += [(p.name, p.name) for p in sorted(audio.iterdir())
                if p.is_dir() and p.name not in known]
    return out


def _clips(samples_dir: Path, class_dir: str, epoch: int) -> list[int]:
    folder = samples_dir / AUDIO_DIR / class_dir
    ks = []
    for p in folder.glob(f"{epoch_tag(epoch)}_*.wav"):
        m = _CLIP_RE.match(p.name)
        if m and int(m.group(1)) == epoch:
            ks.append(int(m.group(2)))
    return sorted(ks)


def _real_clips(samples_dir: Path, class_dir: str) -> list[int]:
    folder = samples_dir / REAL_AUDIO_DIR / class_dir
    return sorted(int(m.group(1)) for p in folder.glob("real_*.wav")
                  if (m := _REAL_RE.match(p.name)))


def _cell(samples_dir: Path, audio: tuple[str, ...], thumb: tuple[str, ...], alt: str,
          css: str = "") -> str:
    """One clip: its thumbnail (when written) above its player; paths relative to the
    samples folder, as parts, so the link is quoted once and the file checked unquoted."""
    img = (f'<img src="{_url(*thumb)}" alt="{html.escape(alt)}">'
           if samples_dir.joinpath(*thumb).is_file() else "")
    cls = f' class="{css}"' if css else ""
    return (f"<td{cls}><figure>{img}<audio controls preload=\"metadata\" "
            f'src="{_url(*audio)}"></audio></figure></td>')


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
nav a { margin-right: .6em; }
section { margin-top: 2em; border-top: 1px solid #ccc; }
img.grid { max-width: 100%; }
table { border-collapse: collapse; }
th { text-align: left; padding: .3em .6em; vertical-align: middle; }
td { padding: .3em; vertical-align: top; }
figure { margin: 0; }
figure img { display: block; width: 192px; height: 96px; image-rendering: pixelated; }
audio { width: 192px; }
.info { color: #666; font-size: .9em; }
td.real { background: #eef5ee; }
td.gap { width: 1em; }
"""


def build_gallery_html(samples_dir: str | Path) -> str:
    """The gallery page for `samples_dir` as a string (newest epoch first)."""
    root = Path(samples_dir)
    manifest = GalleryManifest.read(root)
    epochs = _epochs_on_disk(root)[::-1]
    classes = _class_dirs(root, manifest)
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(manifest.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(manifest.title)}</h1>",
    ]
    if manifest.info:
        info = ", ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in manifest.info.items())
        parts.append(f'<p class="info">{info}</p>')
    if epochs:
        links = " ".join(f'<a href="#{epoch_tag(e)}">{e}</a>' for e in epochs)
        parts.append(f"<nav>epochs: {links}</nav>")
    else:
        parts.append("<p>No samples rendered yet.</p>")
    if (root / LOSS_CURVE).is_file():
        parts.append(f'<section id="losses"><h2>Losses</h2><img class="grid" '
                     f'src="{_url(LOSS_CURVE)}" alt="loss curves"></section>')
    for e in epochs:
        tag = epoch_tag(e)
        parts.append(f'<section id="{tag}"><h2>Epoch {e}</h2>')
        if (root / f"{tag}.png").is_file():
            parts.append(f'<a href="{_url(tag + ".png")}"><img class="grid" '
                         f'src="{_url(tag + ".png")}" alt="spectrogram grid, epoch {e}"></a>')
        rows = []
        n_real = max((len(_real_clips(root, cdir)) for _, cdir in classes), default=0)
        for name, cdir in classes:
            ks = _clips(root, cdir, e)
            if not ks:
                continue
            real = [_cell(root, (REAL_AUDIO_DIR, cdir, f"real_{k}.wav"),
                          (REAL_THUMB_DIR, cdir, f"real_{k}.png"), f"{name} real {k}",
                          "real") for k in _real_clips(root, cdir)]
            real += ["<td></td>"] * (n_real - len(real))
            gen = [_cell(root, (AUDIO_DIR, cdir, f"{tag}_{k}.wav"),
                         (THUMB_DIR, cdir, f"{tag}_{k}.png"), f"{name} {k}") for k in ks]
            gap = '<td class="gap"></td>' if n_real else ""
            rows.append(f"<tr><th>{esc(name)}</th>{''.join(real)}{gap}{''.join(gen)}</tr>")
        if rows:
            head = (f'<tr><th></th><th colspan="{n_real}">real (from the store)</th><th></th>'
                    f'<th>generated</th></tr>' if n_real else "")
            parts.append(f"<table>{head}{''.join(rows)}</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_gallery(samples_dir: str | Path) -> Path:
    """(Re)write `samples_dir/index.html` covering every epoch found on disk."""
    root = Path(samples_dir)
    return _atomic_write(root / GALLERY_FILE, build_gallery_html(root))
