"""The architecture's contracts cover every module: a new top-level module of nfit must be
placed in a layer of ``[tool.importlinter]`` (pyproject.toml), or `make lint` would not
check its imports."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import nfit

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]


def test_every_top_level_module_is_in_a_layer() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    modules = {f"nfit.{m.name}" for m in pkgutil.iter_modules(nfit.__path__)}
    assert modules - placed == set(), "modules outside the layers contract"
    assert placed - modules == set(), "layers name modules that do not exist"
