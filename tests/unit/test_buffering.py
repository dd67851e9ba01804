"""The temp space of proxy/buffering.py: what spools charge to it and give back, and where it refuses."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from proxy.buffering import Buffering, Spool, TempSpace
from proxy.config.model import BufferingSettings
from proxy.metrics import Metrics

MEMORY = 1024


def space(limit: int, metrics: Metrics | None = None) -> TempSpace:
    return TempSpace(limit, None, (metrics or Metrics()).temp_bytes)


Spools = Callable[[TempSpace], Spool]


@pytest.fixture
def spools() -> Iterator[Spools]:
    """Spools with 1,024 bytes of memory, closed after the test (a test may close one itself first)."""
    made: list[Spool] = []

    def make(temp: TempSpace) -> Spool:
        spool = Spool(MEMORY, temp)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


def test_a_spool_within_its_memory_charges_nothing(spools: Spools) -> None:
    """1,024 bytes in a spool with 1,024 of memory: nothing held on disk."""
    temp = space(10_000)
    spool = spools(temp)

    assert spool.write(b"a" * MEMORY)
    assert temp.held == 0


def test_a_spool_past_its_memory_charges_every_byte_in_its_file(spools: Spools) -> None:
    """1,000 then 100 bytes past 1,024 of memory: the file holds, and is charged, all 1,100; 50 more, 1,150."""
    temp = space(10_000)
    spool = spools(temp)
    spool.write(b"a" * 1000)
    spool.write(b"b" * 100)
    charged = temp.held
    spool.write(b"c" * 50)

    assert (charged, temp.held) == (1100, 1150)


def test_a_write_past_the_limit_is_refused_and_changes_nothing(spools: Spools) -> None:
    """1,500 bytes held of 2,000: 600 more are refused, the spool and the charge stay as they were."""
    temp = space(2000)
    spool = spools(temp)
    spool.write(b"a" * 1500)

    assert spool.write(b"b" * 600) is False
    assert (spool.size, temp.held) == (1500, 1500)
    assert spool.read(10_000) == b"a" * 1500


def test_a_write_that_fills_the_space_exactly_is_taken(spools: Spools) -> None:
    """2,000 bytes into a space of 2,000: taken, all of it charged."""
    temp = space(2000)
    spool = spools(temp)

    assert spool.write(b"a" * 2000)
    assert temp.held == 2000


def test_the_space_is_shared_by_every_spool(spools: Spools) -> None:
    """Two spools of 1,500 bytes in a space of 2,000: the second one's rollover is refused."""
    temp = space(2000)
    first, second = spools(temp), spools(temp)
    first.write(b"a" * 1500)

    assert second.write(b"b" * 1500) is False
    assert second.write(b"b" * 500)  # within its memory: no charge, taken
    assert temp.held == 1500


def test_a_spool_read_to_its_end_gives_its_charge_back(spools: Spools) -> None:
    """Every byte read: the file goes, its 1,500 bytes are free again, and the spool starts over in memory."""
    temp = space(2000)
    spool = spools(temp)
    spool.write(b"a" * 1500)
    while spool.read():
        pass

    assert temp.held == 0
    assert spool.write(b"b" * MEMORY)
    assert temp.held == 0


def test_a_spool_read_in_part_keeps_its_charge(spools: Spools) -> None:
    """1,000 of 1,500 bytes read: the file still holds, and is charged, all 1,500."""
    temp = space(2000)
    spool = spools(temp)
    spool.write(b"a" * 1500)
    spool.read(1000)

    assert temp.held == 1500


def test_closing_a_spool_gives_its_charge_back_once(spools: Spools) -> None:
    """A spool closed twice returns its 1,500 bytes once: another spool's 1,200 stay charged."""
    temp = space(5000)
    closed, other = spools(temp), spools(temp)
    closed.write(b"a" * 1500)
    other.write(b"b" * 1200)
    closed.close()
    closed.close()

    assert temp.held == 1200


def test_a_reservation_is_charged_whole_before_any_write(spools: Spools) -> None:
    """A 1,800-byte body announced: charged at once, and its writes up to 1,800 charge nothing more."""
    temp = space(2000)
    spool = spools(temp)

    assert spool.reserve(1800)
    reserved = temp.held
    assert spool.write(b"a" * 1800)
    assert (reserved, temp.held) == (1800, 1800)


def test_a_reservation_past_the_free_space_is_refused(spools: Spools) -> None:
    """1,500 of 2,000 held: a reservation of 1,100 (past memory) is refused and charges nothing."""
    temp = space(2000)
    spools(temp).write(b"a" * 1500)

    assert spools(temp).reserve(1100) is False
    assert temp.held == 1500


def test_a_reservation_within_memory_charges_nothing(spools: Spools) -> None:
    """A body no larger than the spool's memory never goes to disk: no charge, even with no space at all."""
    temp = space(0)

    assert spools(temp).reserve(MEMORY)
    assert temp.held == 0


def test_no_temp_space_refuses_anything_past_memory(spools: Spools) -> None:
    """max_temp_bytes 0: a spool takes its 1,024 bytes of memory and not one more."""
    spool = spools(space(0))

    assert spool.write(b"a" * MEMORY)
    assert spool.write(b"b") is False


def test_the_gauge_shows_the_bytes_held(spools: Spools) -> None:
    """cc_sidecar_temp_bytes follows the charge up and back down."""
    metrics = Metrics()
    temp = space(5000, metrics)
    spool = spools(temp)
    spool.write(b"a" * 1500)
    held = metrics.registry.get_sample_value("cc_sidecar_temp_bytes")
    spool.close()

    assert (held, metrics.registry.get_sample_value("cc_sidecar_temp_bytes")) == (1500, 0)


def test_a_body_larger_than_all_the_temp_space_is_too_large() -> None:
    """max_temp_bytes 100,000 under a max_body_bytes of 1 GiB: bodies spooled past 100,000 bytes are 413s."""
    settings = BufferingSettings(max_temp_bytes=100_000, body_memory_bytes=MEMORY)

    assert Buffering(settings, 60.0, Metrics()).max_spooled_bytes == 100_000


def test_with_no_temp_space_a_body_may_fill_its_memory() -> None:
    """max_temp_bytes 0: the largest body spooled is body_memory_bytes."""
    settings = BufferingSettings(max_temp_bytes=0, body_memory_bytes=MEMORY)

    assert Buffering(settings, 60.0, Metrics()).max_spooled_bytes == MEMORY
