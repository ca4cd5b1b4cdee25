"""Request header fields that the server reads as one value, refused when given twice.

Why: Starlette's ``headers.get`` returns the first of two ``Content-Type`` or
``Authorization`` fields and the second was ignored without a word: a body declared both
``image/png`` and ``application/x-npy`` was judged by the first, and a proxy that reads the
last of two tokens would let through a request this server judged by the other. Which one
was meant cannot be told, as for a multipart parameter given twice (``serve.formdata``).
"""

from __future__ import annotations

from starlette.datastructures import Headers

#: How much of a value a message quotes (a header may be kilobytes long).
SHOWN_CHARS = 40


def repeated_field(headers: Headers, name: str, *, quote: bool = True) -> str | None:
    """The refusal text when the field ``name`` (RFC 9110: one value, not a list) is given
    more than once with different values (an exact repeat is harmless), else None.
    ``quote=False`` leaves the values out of the text (a token must not be echoed)."""
    values = headers.getlist(name)
    if len(set(values)) < 2:
        return None
    shown = f" ({_shown(values[0])}, {_shown(values[1])})" if quote else ""
    return f"{name.title()} header is given more than once{shown}; expected it once"


def _shown(value: str) -> str:
    return value[:SHOWN_CHARS] + ("..." if len(value) > SHOWN_CHARS else "")
