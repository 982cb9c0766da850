"""Docstrings as ``--help`` text: reStructuredText markup taken out."""

from __future__ import annotations

import re

__all__ = ["plain_text"]

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :mod:`jntk_dist.store` -> jntk_dist.store
_LITERAL = re.compile(r"``([^`]+)``")  # ``jntk gram`` -> jntk gram


def plain_text(doc: str | None) -> str:
    """``doc`` (a module docstring) as a terminal shows it: roles and literal quotes removed."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", doc or "")).strip() + "\n"
