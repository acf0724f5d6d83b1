"""File names are bytes: a lossless text form for any name the file system holds.

Python hands out names that are not valid UTF-8 (b'\\xff\\xfe.wav') as str with lone
surrogates (PEP 383, `os.fsdecode`); `os.fsencode` gives the bytes back, so file access
works, but JSON writers (orjson, MLflow, Prefect) refuse such strings. What the store
writes instead is the escaped form: each byte that is not part of valid UTF-8 becomes
`\\xHH` and a backslash becomes `\\\\`; every other character is kept, so ordinary names,
non-ASCII ones included, are written unchanged. `unescape` inverts it exactly.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def is_plain(name: str) -> bool:
    """True when `name` is written as it is (no backslash, valid UTF-8)."""
    if "\\" in name:
        return False
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that are not UTF-8
        return False
    return True


def escape(name: str) -> str:
    """The lossless, JSON-safe text form of a file name from `os` (see the module doc)."""
    if is_plain(name):
        return name
    raw = name.replace("\\", "\\\\").encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def unescape(text: str) -> str:
    """The name `escape` was given (str with surrogate escapes; `os.fsencode` -> bytes)."""
    if "\\" not in text:
        return text
    out, pos = bytearray(), 0
    for m in _ESCAPED.finditer(text):
        out += text[pos:m.start()].encode("utf-8")
        tok = m.group(1)
        out += b"\\" if tok == "\\" else bytes([int(tok[1:], 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return out.decode("utf-8", "surrogateescape")


def printable(name: str) -> str:
    """One-line display form: the escaped name with control characters as `\\xHH` too."""
    text = escape(name)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)
