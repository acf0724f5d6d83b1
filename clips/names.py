"""Which files are clips, and how long a rejection reason may be: plain Python, no torch.

The scan (`clips.scan`) needs only these, so an unchanged precompute, which decodes
nothing, never imports torch (`clips.features` does).
"""

from __future__ import annotations

from gan.errors import one_line

# extensions of formats libsndfile reads (matched case-insensitively)
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".voc", ".sf", ".ircam", ".nist", ".sph",
})


def is_audio_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in AUDIO_EXTENSIONS


REASON_CHARS = 200  # the longest underlying message a rejection reason quotes


def reason_text(x: object) -> str:
    """An underlying error (libsndfile's, the OS's) as it goes into a rejection reason:
    one line, at most REASON_CHARS characters."""
    return one_line(x, REASON_CHARS)
