"""Which files are clips, and how long a rejection reason may be: plain Python, no torch.

The scan (`clips.scan`) needs only these, so an unchanged precompute, which decodes
nothing, never imports torch (`clips.features` does).
"""

from __future__ import annotations

import unicodedata

from gan.errors import one_line
from gan.limits import MAX_CLASS_NAME

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


def class_name_problem(name: str) -> str:
    """Why a class folder's name cannot name a class ("" when it can): a model carries its
    class names in JSON, MLflow tags and request payloads, and prints them in one line, so
    a name must be UTF-8 (no undecodable bytes), hold no control character (newline, tab,
    escape: Unicode category Cc) or line/paragraph separator (the joiners of Persian, Hindi
    or emoji names are fine) and at most MAX_CLASS_NAME characters: checked at precompute,
    so that no store holds a class that training, export or serving would refuse later."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "class folder name is not UTF-8: rename the folder"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return "class folder name holds a control character: rename the folder"
    if len(name) > MAX_CLASS_NAME:
        return (f"class folder name is longer than {MAX_CLASS_NAME} characters: rename "
                "the folder")
    return ""
