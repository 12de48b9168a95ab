"""Header-value templates (sans-IO): compiled at config load, rendered per request.

Syntax: literal text with ``${var}`` references. ``$$`` is a literal ``$``,
and so is a ``$`` followed by anything but ``{`` or ``$``. Variables are the
plain names in `PLAIN_ROOTS` and the dotted ``param.NAME``, ``header.NAME``
(lower-cased at compile), ``query.NAME`` and ``jwt.CLAIM``; a NAME is made
of letters, digits, ``_``, ``.`` and ``-`` (a header NAME of HTTP token
characters; ``param.*`` is what a path's final ``*`` captured), and only
the first dot splits root from name.

A template is a header value, so its text may not contain CR, LF or NUL,
and those characters are dropped from resolved values: a request cannot
inject a line break through, say, ``${header.x-user}``.
"""

from __future__ import annotations

import string
from collections.abc import Callable

from meshgate.core.matchers import TCHAR

PLAIN_ROOTS = ("request_id", "remote_addr", "route", "method", "path", "host", "scheme")
DOTTED_ROOTS = ("param", "header", "query", "jwt")
ROOTS = frozenset(PLAIN_ROOTS + DOTTED_ROOTS)

_KNOWN = ", ".join((*PLAIN_ROOTS, *(f"{root}.*" for root in DOTTED_ROOTS)))
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_FORBIDDEN = {"\r": "CR", "\n": "LF", "\0": "NUL"}
_STRIP = str.maketrans(dict.fromkeys("\r\n\0"))


class TemplateError(ValueError):
    """A template does not compile; `offset` is the character where the problem is."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class Template:
    """A compiled template: literal parts around variable references.

    ``constant`` is the value when there are no variables (callers may skip
    `render`); ``variables`` lists the ``(root, key)`` references in order,
    key ``""`` for plain variables.
    """

    __slots__ = ("_literals", "constant", "text", "variables")

    def __init__(
        self, text: str, literals: tuple[str, ...], variables: tuple[tuple[str, str], ...]
    ) -> None:
        # literals has one more item than variables: literal, var, literal, ..., literal
        self.text = text
        self._literals = literals
        self.variables = variables
        self.constant = literals[0] if not variables else None

    def render(self, resolve: Callable[[str, str], str | None]) -> str:
        """Fill in the variables; ``resolve(root, key)`` returning None renders as ''.

        CR, LF and NUL are dropped from resolved values.
        """
        if self.constant is not None:
            return self.constant
        literals = self._literals
        out = [literals[0]]
        for i, (root, key) in enumerate(self.variables, 1):
            value = resolve(root, key)
            if value:
                out.append(value.translate(_STRIP))
            out.append(literals[i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _reference(name: str, offset: int, allowed_roots: frozenset[str] | None) -> tuple[str, str]:
    """Parse the inside of ``${...}`` found at ``offset`` into (root, key)."""
    ref = "${" + name + "}"
    if not name:
        raise TemplateError(f"empty variable name ${{}} at offset {offset}", offset)
    root, dot, key = name.partition(".")
    if root in DOTTED_ROOTS and not dot:
        raise TemplateError(
            f"variable {ref} at offset {offset} needs a name: ${{{root}.NAME}}", offset
        )
    if root not in ROOTS or (dot and root in PLAIN_ROOTS):
        raise TemplateError(f"unknown variable {ref} at offset {offset} (known: {_KNOWN})", offset)
    if dot:
        if not key:
            raise TemplateError(
                f"empty name in {ref} at offset {offset}: write ${{{root}.NAME}}", offset
            )
        if root == "header":
            bad = next((c for c in key if c not in TCHAR), None)
            allowed = "HTTP token characters"
            key = key.lower()
        elif root == "param" and key == "*":  # what a final '*' of the path captured
            bad = None
            allowed = ""
        else:
            bad = next((c for c in key if c not in _NAME_CHARS), None)
            allowed = "letters, digits, '_', '.', '-'"
        if bad is not None:
            raise TemplateError(
                f"invalid character {bad!r} in {ref} at offset {offset}: use {allowed}", offset
            )
    if allowed_roots is not None and root not in allowed_roots:
        available = ", ".join(sorted(allowed_roots)) or "none"
        raise TemplateError(
            f"variable {ref} at offset {offset} is not available here (available: {available})",
            offset,
        )
    return root, key


def compile_template(text: str, *, allowed_roots: frozenset[str] | None = None) -> Template:
    """Parse and validate a template once, at config load.

    ``allowed_roots`` (names from `ROOTS`, e.g. without ``jwt`` where no
    token is verified) restricts which variables may be used.
    """
    if allowed_roots is not None and not allowed_roots <= ROOTS:
        unknown = ", ".join(sorted(allowed_roots - ROOTS))
        raise ValueError(
            f"allowed_roots: unknown roots {unknown} (known: {', '.join(sorted(ROOTS))})"
        )
    for offset, char in enumerate(text):
        if char in _FORBIDDEN:
            raise TemplateError(
                f"forbidden character {_FORBIDDEN[char]} at offset {offset}: header values cannot"
                " contain CR, LF or NUL",
                offset,
            )
    literals: list[str] = []
    variables: list[tuple[str, str]] = []
    chunk: list[str] = []
    pos = 0
    while (dollar := text.find("$", pos)) >= 0:
        chunk.append(text[pos:dollar])
        follow = text[dollar + 1 : dollar + 2]
        if follow == "{":
            end = text.find("}", dollar + 2)
            if end < 0:
                raise TemplateError(f"unterminated '${{' at offset {dollar}: missing '}}'", dollar)
            variables.append(_reference(text[dollar + 2 : end], dollar, allowed_roots))
            literals.append("".join(chunk))
            chunk = []
            pos = end + 1
        else:
            # "$$" is one "$"; a lone "$" is itself
            chunk.append("$")
            pos = dollar + (2 if follow == "$" else 1)
    chunk.append(text[pos:])
    literals.append("".join(chunk))
    return Template(text, tuple(literals), tuple(variables))
