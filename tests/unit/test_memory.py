"""memory.py: the reader protocol, MemoryFault, RangesReader and the block cache."""

import pytest

from gdbext.core.memory import BlockCache, MemoryFault, RangesReader, Reader, merge_ranges


def test_ranges_reader_reads_and_spans_adjacent_ranges():
    r = RangesReader([(0x1000, b"abcd"), (0x1004, b"efgh"), (0x2000, b"xyz")])
    assert r.read(0x1002, 4) == b"cdef"
    assert r.read(0x2000, 3) == b"xyz"
    assert r.read(0x1000, 0) == b""
    assert isinstance(r, Reader)


@pytest.mark.parametrize("address,size,fault", [(0x0fff, 2, 0x0fff), (0x1006, 4, 0x1008), (0x2002, 2, 0x2003)])
def test_ranges_reader_faults_at_first_missing_byte(address, size, fault):
    r = RangesReader([(0x1000, b"abcd"), (0x1004, b"efgh"), (0x2000, b"xyz")])
    with pytest.raises(MemoryFault) as info:
        r.read(address, size)
    assert info.value.address == fault
    assert info.value.size == address + size - fault
    assert "\n" not in str(info.value) and f"0x{fault:x}" in str(info.value)


def test_ranges_reader_rejects_overlap():
    with pytest.raises(ValueError):
        RangesReader([(0, b"abcd"), (2, b"xy")])


def test_memory_fault_is_one_line_even_with_a_multiline_reason():
    assert str(MemoryFault(0x10, 4, "remote\nsaid E14")) == "cannot read 4 bytes at 0x10: remote said E14"


def test_block_cache_reads_a_run_of_missing_blocks_in_one_backend_read():
    data = bytes(range(256)) * 1024          # 256 KiB
    backend = RangesReader([(0x40000, data)])
    cache = BlockCache(backend, block_size=0x1000)
    assert cache.read(0x40010, 0x3000) == data[0x10:0x3010]
    assert cache.backend_reads == 1 and cache.backend_bytes == 0x4000
    assert cache.read(0x40100, 0x2000) == data[0x100:0x2100]
    assert cache.backend_reads == 1                           # all cached
    # a read with a cached block in the middle: one read per missing run
    cache.invalidate()
    cache.read(0x42000, 0x1000)
    cache.read(0x40000, 0x5000)
    assert cache.backend_reads == 1 + 3                      # counters are cumulative
    assert cache.counters()["backend_bytes"] == 0x4000 + 0x5000


def test_block_cache_serves_the_readable_part_and_faults_at_the_exact_address():
    backend = RangesReader([(0x10000, b"\x11" * 0x1800)])    # readable 0x10000..0x11800
    cache = BlockCache(backend, block_size=0x10000)
    assert cache.read(0x11000, 0x800) == b"\x11" * 0x800
    with pytest.raises(MemoryFault) as info:
        cache.read(0x11000, 0x1000)
    assert info.value.address == 0x11800
    with pytest.raises(MemoryFault) as info:
        cache.read(0x12000, 4)
    assert info.value.address == 0x12000
    reads = cache.backend_reads
    with pytest.raises(MemoryFault):
        cache.read(0x13000, 4)                                 # the block is known: no new read
    assert cache.backend_reads == reads
    assert cache.read_prefix(0x11700, 0x200) == b"\x11" * 0x100


class _VagueReader:
    """A backend that only ever says 'fault at the start of your request' (like a bare E01)."""

    def __init__(self, inner):
        self.inner = inner

    def read(self, address, size):
        try:
            return self.inner.read(address, size)
        except MemoryFault:
            raise MemoryFault(address, size, "E01")


def test_block_cache_finds_readable_pages_with_a_vague_backend():
    backend = _VagueReader(RangesReader([(0x0, b"\x22" * 0x3000)]))
    cache = BlockCache(backend, block_size=0x10000, probe_size=0x1000)
    assert cache.read(0x2ff0, 0x10) == b"\x22" * 0x10
    with pytest.raises(MemoryFault) as info:
        cache.read(0x2ff0, 0x20)
    assert info.value.address == 0x3000


def test_block_cache_prefetch_never_raises_and_short_reads_fault():
    class Short:
        def read(self, address, size):
            return b"\0" * (size // 2)
    cache = BlockCache(Short(), block_size=0x100, probe_size=0x100)
    cache.prefetch(0, 0x400)
    with pytest.raises(MemoryFault):
        cache.read(0, 0x100)


def test_read_prefix_and_merge_ranges():
    cache = BlockCache(RangesReader([(0x100, b"abc")]), 0x100)
    assert cache.read_prefix(0x100, 10) == b"abc"
    assert cache.read_prefix(0x50, 10) == b""
    assert merge_ranges([(5, 10), (0, 3), (9, 12)]) == [(0, 3), (5, 12)]
