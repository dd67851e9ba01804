"""An outage of Customer's Canvas in the log: a line when it begins and one when it ends, not one per page.

The emulator answers every call with a 500 (as in test_faults); the log is read through a handler
with the same repeated-warning filter that ``setup_logging`` puts on stderr, so what is asserted is
what an operator would read, and through pytest's unfiltered capture, so the filter is not what
keeps the held-back pages quiet.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

import pytest

from proxy.log import RepeatedWarningFilter
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.reliability.helpers import USER_HEADER, fetch

OPENED = re.compile(r"Storefront API failed 3 times in a row; circuit open")
CLOSED = re.compile(
    r"Storefront API answers again; circuit closed after [0-9.]+ s open, (\d+) editor pages served without a token meanwhile"
)
PAGES_WHILE_OPEN = 30


class Collected(logging.Handler):
    """Keeps the records that pass its filters."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def operator_log() -> Iterator[Collected]:
    """What the stderr handler of ``cc-sidecar run`` would write: filtered for repeated warnings."""
    handler = Collected()
    handler.addFilter(RepeatedWarningFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def warnings_of(records: list[logging.LogRecord]) -> list[str]:
    return [
        record.getMessage()
        for record in records
        if record.name.startswith("proxy.") and record.levelno == logging.WARNING
    ]


async def test_an_outage_writes_one_warning_when_it_begins_and_one_when_it_ends(
    shop: Shop,
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    operator_log: Collected,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """30 pages while the circuit is open write no line each; its closing line counts them (and the one that opened it)."""
    sidecar = await make_sidecar(
        sidecar_config(
            shop.url, emulator.url, trusted_networks=["127.0.0.1/32"], user={"header": USER_HEADER}
        )
    )
    emulator.state.fail_all(status=500)
    pages_until_open = 0
    while not any(OPENED.match(line) for line in warnings_of(operator_log.records)):
        pages_until_open += 1
        answer = await fetch(sidecar, "/editor/mug", headers={USER_HEADER: f"before-{pages_until_open}"})
        assert answer.headers["X-CC-Sidecar"] == "token-unavailable"
        assert pages_until_open <= 3  # three failures open it; each page makes at least one
    for number in range(PAGES_WHILE_OPEN):
        answer = await fetch(sidecar, "/editor/mug", headers={USER_HEADER: f"during-{number}"})
        assert answer.headers["X-CC-Sidecar"] == "token-unavailable"
    lines_during_outage = warnings_of(operator_log.records)
    # Unfiltered, too: the pages held back by the open circuit logged nothing each.
    every_line = warnings_of(caplog.records)
    assert sum(line.startswith("no customer token: ") for line in every_line) == pages_until_open

    emulator.state.clear_faults()
    await asyncio.sleep(0.6)  # open_s (0.5 s) is over: the next page's call is the probe
    answer = await fetch(sidecar, "/editor/mug", headers={USER_HEADER: "after"})
    assert "X-CC-Sidecar" not in answer.headers

    lines = warnings_of(operator_log.records)
    assert len(lines_during_outage) == 2  # the first page's "no customer token", the opening
    assert lines_during_outage[0].startswith("no customer token: ")
    assert OPENED.match(lines_during_outage[1])
    assert lines[:2] == lines_during_outage
    [closed] = lines[2:]
    match = CLOSED.match(closed)
    assert match is not None, closed
    # The page whose failure opened the circuit was served after it opened, like the 30.
    assert int(match.group(1)) == PAGES_WHILE_OPEN + 1
