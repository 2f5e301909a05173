"""Loupe's prompts and answer templates: plain files, versioned by their content.

``load_prompt("system.md")`` returns the text and a short content hash; the hash is what the
audit log records as the prompt version, so a changed prompt is always visible.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]


@cache
def load_prompt(name: str) -> Prompt:
    """A prompt file of this package, e.g. ``system.md``."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return Prompt(name=name, text=text.strip() + "\n")


@cache
def load_table(name: str) -> dict[str, Any]:
    """A TOML data file of this package, e.g. ``planner.toml``."""
    return tomllib.loads(load_prompt(name).text)
