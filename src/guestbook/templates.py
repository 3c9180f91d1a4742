"""The Jinja environment the HTML is rendered with: autoescaped always, assets linked by their
versioned URLs."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, Template, select_autoescape

from .assets import STATIC

_environment = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)
_environment.globals["asset"] = STATIC.url


def template(name: str) -> Template:
    return _environment.get_template(name)
