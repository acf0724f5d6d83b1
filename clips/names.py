"""Which files are clips, and how a reason fits on one line: plain Python, no torch.

The scan (`clips.scan`) needs only these, so an unchanged precompute, which decodes
nothing, never imports torch (`clips.features` does).
"""

from __future__ import annotations

# extensions of formats libsndfile reads (matched case-insensitively)
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".voc", ".sf", ".ircam", ".nist", ".sph",
})


def is_audio_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in AUDIO_EXTENSIONS


def one_line(x: object, limit: int = 200) -> str:
    text = " ".join(str(x).split()) or type(x).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
