"""The test tree's layout: helpers shared between test modules live in tests/support/.

A test module that imports another test module runs (or at least collects) that module's tests
twice and couples unrelated files; importing a conftest bypasses pytest's own fixture discovery.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (`from a import b` counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module.startswith("tests.") and (last.startswith("test_") or last == "conftest")


def test_no_module_under_tests_imports_a_test_module_or_a_conftest() -> None:
    offenders = [
        f"{path.relative_to(TESTS)} imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for module in sorted(_imported_modules(path))
        if _forbidden(module)
    ]
    assert not offenders, "move the shared helper to tests/support/:\n" + "\n".join(offenders)


def test_support_does_not_import_test_tiers() -> None:
    """tests/support/ is the bottom layer: it may not reach back into a tier's modules."""
    tiers = ("tests.unit", "tests.contract", "tests.integration", "tests.polyglot", "tests.deploy")
    offenders = [
        f"{path.relative_to(TESTS)} imports {module}"
        for path in sorted((TESTS / "support").glob("*.py"))
        for module in sorted(_imported_modules(path))
        if module.startswith(tiers)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_an_offender() -> None:
    assert _forbidden("tests.integration.test_errors")
    assert _forbidden("tests.integration.conftest")
    assert not _forbidden("tests.support.gateway")
    assert not _forbidden("tests.integration.sdk_operations")
