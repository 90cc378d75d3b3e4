"""File names that are not valid UTF-8, stored losslessly and shown escaped.

On Linux a file name is bytes; Python hands undecodable bytes over as lone surrogates
(``surrogateescape``), which SQL drivers, JSON answers and Qdrant payloads refuse. Such a path is
stored as its bytes decoded with ``backslashreplace`` (``b"caf\\xe9.png"`` -> ``"caf\\\\xe9.png"``,
what a user sees in results, exports and the page) and turned back into the real name only where
a file is opened (``on_disk``). Valid UTF-8 names are stored as they are, so nothing changes for
them; a stored name is only read as escaped when its escapes make invalid UTF-8 (what
``backslashreplace`` alone produces) and no file has the literal name.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(rb"\\x([89a-f][0-9a-f])")


def stored(path: str) -> str:
    """A path (possibly holding surrogate escapes) as valid Unicode text: itself when it is."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def on_disk(text: str) -> str:
    """The file name a stored path stands for (the inverse of ``stored``)."""
    if "\\x" not in text or os.path.lexists(text):
        return text
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    try:
        raw.decode("utf-8")
        return text  # the escapes were part of a valid name, not made by stored()
    except UnicodeDecodeError:
        return os.fsdecode(raw)
