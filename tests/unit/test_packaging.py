"""The package installs what the server imports, and says what its licence is."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Packages that live in this repository (the server and the generated stubs).
FIRST_PARTY = {p.name for d in ("server", "client_stubs/python") for p in (ROOT / d).iterdir() if p.is_dir()}


def server_imports() -> dict[str, Path]:
    """Top-level third-party modules imported anywhere under server/ (lazy imports included)."""
    found: dict[str, Path] = {}
    for path in (ROOT / "server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(top, path)
    return found


def install_closure(requirements: list[str], extras: set[str]) -> set[str]:
    """Distributions `pip install '.[server]'` brings: the requirements, recursively."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        marker_env = [{"extra": e} for e in wanted or {""}]
        if req.marker and not any(req.marker.evaluate(env) for env in marker_env):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(r), set(req.extras)) for r in md.requires(req.name) or ()]
    return seen


def test_the_server_install_brings_every_module_the_server_imports() -> None:
    server = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["server"]
    closure = install_closure(server, {"server"})
    providers = md.packages_distributions()
    missing = {
        module: str(path.relative_to(ROOT))
        for module, path in server_imports().items()
        if not {canonicalize_name(d) for d in providers.get(module, [])} & closure
    }
    assert not missing, f"imported by the server but not installed by '.[server]': {missing}"


def test_the_closure_check_sees_a_dev_only_dependency() -> None:
    # pytest is only in `dev`: the same walk must not find it in the server install.
    server = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["server"]
    assert "pytest" not in install_closure(server, {"server"})
    assert "pytest" in install_closure(PROJECT["optional-dependencies"]["dev"], set())


def test_mit_licence_file_and_metadata() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the openai-grpc authors" in text
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    meta = md.metadata("openai-grpc")
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
