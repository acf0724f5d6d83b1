"""storage.file_names: any name the file system holds has a lossless, JSON-safe text form."""

from __future__ import annotations

import json
import os

import orjson
from hypothesis import given
from hypothesis import strategies as st

from storage.file_names import escape, is_plain, printable, unescape

# POSIX names: any bytes but NUL and "/"
NAME_BYTES = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"\0", b"_").replace(b"/", b"_"))


@given(NAME_BYTES)
def test_any_name_round_trips_through_the_escaped_form(raw: bytes) -> None:
    name = os.fsdecode(raw)  # what os.scandir hands out
    text = escape(name)
    text.encode("utf-8")  # strict: valid UTF-8, so orjson and JSON APIs take it
    assert orjson.loads(orjson.dumps(text)) == text
    assert unescape(text) == name and os.fsencode(unescape(text)) == raw
    assert "\n" not in printable(name) and "\r" not in printable(name)


def test_plain_names_are_written_unchanged() -> None:
    for name in ("dog/a.wav", "ключ/звук.flac", "日本/音.ogg", "a b/c.wav"):
        assert is_plain(name) and escape(name) == name == unescape(name)
    assert escape(os.fsdecode(b"\xff\xfe.wav")) == "\\xff\\xfe.wav"
    assert escape("back\\slash.wav") == "back\\\\slash.wav"
    assert unescape("back\\\\slash.wav") == "back\\slash.wav"
    # a literal backslash followed by x41 is not mistaken for an escaped byte
    assert unescape(escape("odd\\x41.wav")) == "odd\\x41.wav"
    assert json.loads(json.dumps(escape(os.fsdecode(b"cat\xe9")))) == "cat\\xe9"
