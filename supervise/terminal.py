"""Text from outside (a host name in the database, an argument, a remote error) made safe to
print: one line, no escape sequences for the terminal, encodable whatever the bytes were."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with each character that is not printable (control and format characters, line
    separators, lone surrogates, which stand for bytes that were not UTF-8) written as its
    Python escape, ``\\x1b`` or ``\\udcff``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
