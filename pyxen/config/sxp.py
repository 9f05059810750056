"""SXP, the S-expression format of the Xen 3 toolstack.

xend speaks SXP on its control socket, keeps domain configurations in it
and ``xm list -l`` prints it; ``xm`` and ``xend`` on both sides of pyxen
therefore have to read and write it exactly as Xen 3.x's
``xen/xend/sxp.py`` does.  This module is a from-scratch reading of that
behaviour:

* ``parse`` / ``from_string`` / ``parse_file`` read text into nested
  Python lists of ``str`` (every atom is a string; there are no numbers);
* ``to_string`` writes a value the way ``sxp.show`` does, and ``pretty``
  lays it out the way ``PrettyPrint.prettyprint`` does for ``xm list -l``;
* ``name``, ``children``, ``child_value`` ... read values written with
  Xen's element convention ``(name (@ (key value)...) child...)``.

Where Xen's reader crashed (``\\x`` with fewer than two hex digits raised
NameError) or said nothing (EOF inside a comment inside a list), this
module gives a sensible result or ``SxpError`` instead; every other
deviation is noted where it is made.
"""

from __future__ import annotations

import string

__all__ = [
    "SxpError",
    "parse",
    "from_string",
    "parse_file",
    "to_string",
    "pretty",
    "is_list",
    "name",
    "attributes",
    "attribute",
    "children",
    "child",
    "child_at",
    "child0",
    "child_value",
    "children_values",
    "merge",
]

_SPACE = frozenset(" \t\n\v\f\r")
# Characters that end an atom.  Only "(" and ")" mean anything on their own;
# the rest merely stop an atom, as in Xen.
_ATOM_END = _SPACE | frozenset("#{}()<>[]!;")
_QUOTES = frozenset("\"'")
# Control-D: Xen treats it, at the start of a token, as end of input.
_EOT = "\x04"
_ESCAPES = {
    "a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f",
    "r": "\r", "\\": "\\", "'": "'", '"': '"',
}
_HEX = frozenset(string.hexdigits)
_OCT = frozenset(string.octdigits)
_BARE = frozenset(string.ascii_letters + string.digits + ".-_:/~")
# The deepest nesting any reader accepts.  Real configurations nest about
# six levels ((vm (device (vbd ...)))); every consumer of parsed values
# (config builders, to_string, pretty) recurses, so a hostile 10^5 levels
# must stop here, with one line, rather than at Python's recursion limit.
MAX_DEPTH = 64


class SxpError(ValueError):
    """A syntax error, with the 1-based line and column where it was found."""

    def __init__(self, message: str, line: int, column: int,
                 filename: str | None = None):
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column
        self.filename = filename

    def __str__(self) -> str:
        if self.filename is not None:
            return f"{self.filename}:{self.line}: {self.message}"
        return f"{self.message} at line {self.line}, column {self.column}"

    def with_file(self, filename: str) -> SxpError:
        """The same error, reported as ``<file>:<line>: <message>``."""
        return SxpError(self.message, self.line, self.column, filename)


def _error(text: str, pos: int, message: str) -> SxpError:
    # Line and column are only needed on failure, so work them out here
    # rather than counting on every character.
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return SxpError(message, line, column)


def _take(text: str, start: int, allowed: frozenset, most: int) -> str:
    end = start
    while end < len(text) and end - start < most and text[end] in allowed:
        end += 1
    return text[start:end]


_OPEN_STRING = "unexpected EOF: the string opened here is never closed"
_OPEN_LIST = "unexpected EOF: this '(' is never closed"


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read the quoted string opening at ``start``; return it and the index
    just past its closing quote."""
    delim = text[start]
    n = len(text)
    out = []
    i = start + 1
    while True:
        if i >= n:
            raise _error(text, start, _OPEN_STRING)
        c = text[i]
        if c == delim:
            return "".join(out), i + 1
        if c != "\\":
            # Anything else, control characters included, is literal:
            # Xen only checks printability where a token starts.
            out.append(c)
            i += 1
            continue
        backslash = i
        i += 1
        if i >= n:
            raise _error(text, start, _OPEN_STRING)
        e = text[i]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 1
        elif e == "x":
            # Xen read A-F as 0-5 and crashed on a short escape; here the
            # value is right, and one digit before a non-hex character is
            # accepted, as the octal rule accepts fewer than three.
            digits = _take(text, i + 1, _HEX, 2)
            if not digits:
                if i + 1 >= n:
                    raise _error(text, start, _OPEN_STRING)
                raise _error(text, backslash, "invalid hex escape")
            out.append(chr(int(digits, 16)))
            i += 1 + len(digits)
        elif e in _OCT:
            digits = _take(text, i, _OCT, 3)
            value = int(digits, 8)
            if value > 0xFF:
                raise _error(text, backslash,
                             "invalid octal escape: out of range " + digits)
            out.append(chr(value))
            i += len(digits)
        elif e in "uU":
            # Extension: Python's repr() writes characters it deems
            # unprintable above U+00FF as \uXXXX / \UXXXXXXXX, and to_string
            # must be readable back.  Anything short of a full code point
            # falls through to Xen's unknown-escape rule, so text Xen could
            # read ('C:\Users') still reads the way Xen read it.
            size = 4 if e == "u" else 8
            digits = _take(text, i + 1, _HEX, size)
            if len(digits) == size and int(digits, 16) <= 0x10FFFF:
                out.append(chr(int(digits, 16)))
                i += 1 + size
            else:
                out.append("\\")
                i += 1
        else:
            # Xen's quirk, kept on purpose: an unknown escape "\q" yields
            # a lone backslash and the "q" is dropped.
            out.append("\\")
            i += 1


def parse(text: str) -> list:
    """Parse every top-level value in ``text``; return them as a list.

    Raises SxpError on malformed input and nothing else.  Lists are read
    with an explicit stack, and nesting deeper than ``MAX_DEPTH`` is an
    error, so nothing downstream can exhaust Python's recursion limit.
    """
    if not isinstance(text, str):
        raise TypeError(f"sxp.parse wants str, not {type(text).__name__}")
    n = len(text)
    stack: list[list] = [[]]
    # Where each open "(" is, so an unbalanced input can name the one
    # left open rather than only saying "unexpected EOF".
    opened: list[int] = []
    i = 0
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "(":
            if len(opened) >= MAX_DEPTH:
                raise _error(text, i, f"nested deeper than {MAX_DEPTH} levels")
            stack.append([])
            opened.append(i)
            i += 1
        elif c == ")":
            if len(stack) == 1:
                raise _error(text, i, "syntax error: )")
            done = stack.pop()
            opened.pop()
            stack[-1].append(done)
            i += 1
        elif c in _QUOTES:
            value, i = _read_string(text, i)
            stack[-1].append(value)
        elif c == _EOT:
            break
        elif c.isprintable():
            # Xen accepts only ASCII here; printable non-ASCII is accepted
            # too because to_string writes e.g. "é" bare (it is alnum).
            # Like Xen, a separator such as "[" starts an atom too: "[ x ]"
            # is three atoms, "[abc]" is "[abc" and "]".
            start = i
            i += 1
            while i < n and text[i] not in _ATOM_END:
                i += 1
            stack[-1].append(text[start:i])
        else:
            raise _error(text, i, f"invalid character: code {ord(c)}")
    if len(stack) > 1:
        # Reported where the unclosed "(" is: that is the line to fix.
        raise _error(text, opened[-1], _OPEN_LIST)
    return stack[0]


def from_string(text: str):
    """The first value in ``text`` (all of it is parsed and checked)."""
    values = parse(text)
    if not values:
        raise _error(text, len(text), "no value")
    return values[0]


def parse_file(path) -> list:
    """Parse a UTF-8 file; errors come back as ``<path>:<line>: <message>``."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        good = data[:e.start].decode("utf-8")
        raise _error(good, len(good),
                     f"invalid UTF-8 byte 0x{data[e.start]:02x}"
                     ).with_file(str(path)) from None
    try:
        return parse(text)
    except SxpError as e:
        raise e.with_file(str(path)) from None


def _is_atomic(s: str) -> bool:
    # Xen's atomp(): the empty string passes too, which is why xend shows
    # an unset kernel as "(kernel )" -- and why "" does not survive a
    # round trip (it reads back as nothing).
    return s.isalnum() or s == "@" or all(c in _BARE for c in s)


def to_string(value) -> str:
    """Write ``value`` on one line, as Xen's ``sxp.show``.

    Lists and tuples become ``(a b c)``; strings are bare when atomic and
    otherwise Python ``repr()``-quoted, as Xen did.  Booleans are written
    ``1``/``0``: Xen's str() would give ``True``, but every SXP reader
    (xm, xend, config code) does int() on flags such as ``(bootable 1)``.
    Anything else (None, dict, objects) is a TypeError rather than Xen's
    silent ``repr(str(x))``, which would put ``'None'`` on the wire.
    """
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(to_string(x) for x in value) + ")"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return str(float(value))
    if isinstance(value, str):
        return value if _is_atomic(value) else repr(str(value))
    raise TypeError(f"sxp cannot write a {type(value).__name__}: {value!r}")


def _pretty(value, column: int, width: int, out: list) -> None:
    flat = to_string(value)
    if not isinstance(value, (list, tuple)) or column + len(flat) <= width:
        out.append(flat)
        return
    # Too wide: the first element stays on the "(" line, every other one
    # goes on its own line 4 columns in, and ")" closes at the "(" column.
    out.append("(")
    if value:
        _pretty(value[0], column + 1, width, out)
    for item in value[1:]:
        out.append("\n" + " " * (column + 4))
        _pretty(item, column + 4, width, out)
    out.append("\n" + " " * column + ")")


def pretty(value, width: int = 80) -> str:
    """Lay ``value`` out as Xen's ``PrettyPrint.prettyprint`` (xm list -l).

    A list is written inline if it fits between its column and ``width``;
    that is what Xen's block printer amounts to for SXP.
    """
    out: list[str] = []
    _pretty(value, 0, width, out)
    out.append("\n")
    return "".join(out)


# --- Accessors for (name (@ (key value)...) child...) values ---------------

def is_list(value) -> bool:
    return isinstance(value, (list, tuple))


def _is_element(value, elt=None) -> bool:
    return is_list(value) and len(value) > 0 and (elt is None or value[0] == elt)


def name(sxpr):
    """The element name of a list, the string itself for a string, else None."""
    if isinstance(sxpr, str):
        return sxpr
    if _is_element(sxpr):
        return sxpr[0]
    return None


def attributes(sxpr) -> list:
    """The ``(key value)`` pairs of an element's ``(@ ...)`` list."""
    if is_list(sxpr) and len(sxpr) > 1 and _is_element(sxpr[1], "@"):
        return list(sxpr[1][1:])
    return []


def attribute(sxpr, key, default=None):
    for pair in attributes(sxpr):
        if is_list(pair) and pair and pair[0] == key:
            return pair[1] if len(pair) > 1 else default
    return default


def children(sxpr, elt=None) -> list:
    """An element's children (after its name and attributes), optionally
    only the sub-elements named ``elt``."""
    kids: list = []
    if is_list(sxpr) and len(sxpr) > 1:
        first = 2 if _is_element(sxpr[1], "@") else 1
        kids = list(sxpr[first:])
    if elt:
        kids = [k for k in kids if _is_element(k, elt)]
    return kids


def child(sxpr, elt, default=None):
    """The first child element named ``elt``."""
    for kid in children(sxpr):
        if _is_element(kid, elt):
            return kid
    return default


def child_at(sxpr, index: int, default=None):
    kids = children(sxpr)
    return kids[index] if 0 <= index < len(kids) else default


def child0(sxpr, default=None):
    return child_at(sxpr, 0, default)


def child_value(sxpr, elt, default=None):
    """The value of ``(elt value ...)`` -- its first child -- or ``default``."""
    kid = child(sxpr, elt)
    if kid is None:
        return default
    return child_at(kid, 0, default)


def children_values(sxpr, elt) -> list:
    """The values of every ``(elt value)`` child, in order; e.g. all the
    ``(cpus ...)`` of a config.  Children with no value are skipped."""
    return [k[1] for k in children(sxpr, elt) if len(k) > 1]


def merge(s1, s2):
    """Merge two elements, ``s1`` winning: children are paired by name and
    merged in order, unpaired ones kept (Xen's sxp.merge).  Attributes of
    both are dropped, as in Xen."""
    if s1 is None:
        return s2
    if s2 is None:
        return s1
    if not _is_element(s1):
        return s1
    named1, values1 = _child_map(s1)
    named2, _ = _child_map(s2)
    merged = [name(s1)]
    for key, kids1 in named1.items():
        kids2 = named2.get(key, [])
        common = min(len(kids1), len(kids2))
        merged.extend(merge(a, b) for a, b in zip(kids1, kids2))
        merged.extend(kids1[common:])
        merged.extend(kids2[common:])
    for key, kids2 in named2.items():
        if key not in named1:
            merged.extend(kids2)
    merged.extend(values1)
    return merged


def _child_map(sxpr):
    named: dict = {}
    values = []
    for kid in children(sxpr):
        if _is_element(kid):
            named.setdefault(kid[0], []).append(kid)
        else:
            values.append(kid)
    return named, values
