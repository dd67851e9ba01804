"""Reliability tests: no test here may leave an ERROR record behind (an escaped exception)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_error_records(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if anything logged at ERROR: an unhandled exception, a task nobody awaited."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.get_records("call") + caplog.get_records("teardown")
        if record.levelno >= logging.ERROR
    ]
    assert errors == [], errors
