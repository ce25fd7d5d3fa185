"""Text from names (file names, link names, rsync's messages) made safe to show.

A file name at the mountain can hold any byte but ``/`` and NUL: a byte that is not
UTF-8 (kept by ``surrogateescape`` as a lone surrogate, which no encoder accepts), a
carriage return, a terminal escape. Everything that leaves the workflow as text — a
mail, the status page, a log line, DESI's status files — goes through `printable`
first, so that such a name can neither crash the writer nor forge a header or a line.
"""

from __future__ import annotations


def printable(text: object) -> str:
    """`text` with control characters and undecodable bytes escaped, the rest kept.

    A lone surrogate from ``surrogateescape`` becomes ``\\xNN`` (the byte it stands
    for), a control character its Python escape (``\\r``, ``\\n``, ``\\x1b``);
    printable Unicode (``×``, ``—``) is kept, so reasons stay readable.
    """
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def printable_lines(text: object) -> str:
    """`printable`, line by line: the line breaks of a text (a mail body) are kept."""
    return "\n".join(printable(line) for line in str(text).split("\n"))
