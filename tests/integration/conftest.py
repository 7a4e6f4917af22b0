"""Every request the fake upstream receives from a gateway is validated against `spec/openapi.yaml`
(openapi-core, tests/support/openapi_validation.py): a test whose gateway sent a request the spec
rejects fails at teardown, whatever it asserted itself. The gateway and fake fixtures are
tests/conftest.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import openapi_validation
from tests.support.gateway import received

# How many were validated in this session (printed in the terminal summary).
validated_requests = 0


@pytest.fixture(autouse=True)
def _upstream_requests_follow_the_spec() -> Iterator[None]:
    """Validate what this test made the gateway send upstream (after the test, in one go)."""
    global validated_requests  # noqa: PLW0603
    received.clear()
    yield
    records = list(received)
    received.clear()
    problems = [v for r in records for v in openapi_validation.violations(r)]
    validated_requests += len(records)
    if problems:
        pytest.fail("upstream requests the spec rejects:\n" + "\n".join(problems[:20]), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if validated_requests:
        terminalreporter.write_line(
            f"upstream requests validated against spec/openapi.yaml: {validated_requests}"
        )
