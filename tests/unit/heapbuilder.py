"""A synthetic kernel for unit tests: a reference allocator over a bytearray.

It lays out memory the way docs/kernel-interface.md describes (image, globals, the page
array at ``__end``, the heap on the next page boundary) for any layout (32/64-bit, either
endianness), and runs a small first-fit allocator with the contract's rules (16-byte sizes,
split, coalesce on free, poison of free payloads and absorbed headers, heap_stats). Tests
then corrupt the bytes on purpose and check what kheap says.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from gdbext.core.layout import Field, round_up
from gdbext.core.layouts import Layouts, default_layouts
from gdbext.core.memory import RangesReader
from gdbext.core.program import Overrides, Program
from gdbext.core.symbols import ElfInfo, Section, make_elf_info

PAGE = 4096


def write_field(buf: bytearray, base: int, f: Field, value: int, endian: str) -> None:
    order = "little" if endian == "<" else "big"
    if f.bit_size is None:
        buf[base + f.offset:base + f.offset + f.size] = (value & ((1 << (8 * f.size)) - 1)).to_bytes(f.size, order)
        return
    raw = int.from_bytes(buf[base + f.offset:base + f.offset + f.size], order)
    mask = ((1 << f.bit_size) - 1) << f.bit_shift
    raw = (raw & ~mask) | ((value << f.bit_shift) & mask)
    buf[base + f.offset:base + f.offset + f.size] = raw.to_bytes(f.size, order)


class SyntheticKernel:
    """Memory image + ElfInfo of a kernel whose heap is managed by a reference allocator."""

    def __init__(self, pointer_size: int = 4, endian: str = "<", heap_size: int = 64 * 1024,
                 num_pages: Optional[int] = None, poison: int = 0xA5, layouts: Optional[Layouts] = None,
                 split_min: Optional[int] = None, back_pointer: bool = False, vaddr_mapped_only: bool = False,
                 head_only_free_list: bool = False, symbol_names: Optional[Dict[str, str]] = None,
                 payload_offset: Optional[int] = None) -> None:
        """``layouts``' segment layout may have bit-fields and a payload offset past the header;
        ``back_pointer``: store the header's address at payload - P in used segments (Mazarin's
        later layout); ``vaddr_mapped_only``: vaddr_mapped 0 on the pages past the heap (the
        tutorial's and Mazarin's pages); ``head_only_free_list``: ``free_pages`` is a bare
        pointer (Go's ``freePages *Page``); ``symbol_names``: conventional name -> the name the
        ELF gives it (``kheap_list``, ``main.heapSegmentListHead``)."""
        self.p = pointer_size
        self.endian = endian
        self.order = "little" if endian == "<" else "big"
        self.layouts = layouts or default_layouts(pointer_size, endian)
        self.hdr = self.layouts.segment.header_size
        # payload = header + off (the kernel's, whether or not its ELF says it)
        self.off = payload_offset if payload_offset is not None else self.layouts.segment.payload_offset
        self.back_pointer = back_pointer
        self.vaddr_mapped_only = vaddr_mapped_only
        self.head_only_free_list = head_only_free_list
        self.symbol_names = dict(symbol_names or {})
        self.poison = poison
        self.split_min = split_min if split_min is not None else self.off + 16
        self.image_base = 0x8000 if pointer_size == 4 else 0x80000
        ib = self.image_base
        self.symbols: Dict[str, int] = {
            "_start": ib, "uart_puts": ib + 0x100, "kmalloc": ib + 0x200, "kfree": ib + 0x300,
            "heap_poison": ib + 0x1000,
        }
        self.sizes: Dict[str, int] = {"uart_puts": 0x80, "kmalloc": 0x100, "kfree": 0x80, "heap_poison": 4}
        off = ib + 0x2000
        pl, st = self.layouts.page_list, self.layouts.stats
        for name, size in (("heap_segment_list_head", self.p), ("all_pages_array", self.p),
                           ("num_pages", 4), ("free_pages", pl.size), ("kernel_heap_start", self.p),
                           ("kernel_heap_size", self.p), ("heap_stats", st.size)):
            off = round_up(off, 8)
            self.symbols[name] = off
            self.sizes[name] = size
            off += size
        self.end = ib + 0x4000
        self.symbols["__end"] = self.end
        self.page_size = self.layouts.page.size
        self.heap_size = heap_size
        if num_pages is None:
            num_pages = 256
            # Grow until the image, the array and the heap fit in RAM.
            while round_up(self.end + num_pages * self.page_size, PAGE) + heap_size > num_pages * PAGE:
                num_pages *= 2
        self.num_pages = num_pages
        self.heap_start = round_up(self.end + num_pages * self.page_size, PAGE)
        self.heap_end = self.heap_start + heap_size
        self.mem = bytearray(self.heap_end - ib)
        self.stats = {f.name: 0 for f in st.fields}
        self._init_globals()
        self._init_pages()
        self._init_heap()

    # -- raw access ------------------------------------------------------------------------------
    def _o(self, address: int) -> int:
        return address - self.image_base

    def write(self, address: int, data: bytes) -> None:
        o = self._o(address)
        self.mem[o:o + len(data)] = data

    def read(self, address: int, size: int) -> bytes:
        o = self._o(address)
        return bytes(self.mem[o:o + size])

    def write_int(self, address: int, size: int, value: int) -> None:
        self.write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, self.order))

    def read_int(self, address: int, size: int) -> int:
        return int.from_bytes(self.read(address, size), self.order)

    def set_global(self, name: str, value: int, size: Optional[int] = None) -> None:
        self.write_int(self.symbols[name], size or self.sizes[name], value)

    # -- segments -------------------------------------------------------------------------------
    def seg_field(self, address: int, name: str) -> int:
        f = self.layouts.segment.fields[name]
        value = self.read_int(address + f.offset, f.size)
        if f.bit_size is not None:
            value = (value >> f.bit_shift) & ((1 << f.bit_size) - 1)
        return value

    def set_seg(self, address: int, **values: int) -> None:
        for name, value in values.items():
            write_field(self.mem, self._o(address), self.layouts.segment.fields[name], value, self.endian)

    def header(self, address: int, nxt: int, prv: int, alloc: int, size: int) -> None:
        self.set_seg(address, next=nxt, prev=prv, is_allocated=alloc, segment_size=size)

    def segments(self) -> List[Tuple[int, int, int]]:
        """(address, size, is_allocated) by following next from the head (healthy heaps only)."""
        out = []
        addr = self.read_int(self.symbols["heap_segment_list_head"], self.p)
        while addr and len(out) < self.heap_size // self.hdr + 1:
            out.append((addr, self.seg_field(addr, "segment_size"), self.seg_field(addr, "is_allocated")))
            addr = self.seg_field(addr, "next")
        return out

    def _poison_range(self, start: int, end: int) -> None:
        if self.poison >= 0 and end > start:
            self.write(start, bytes([self.poison]) * (end - start))

    # -- globals and pages ----------------------------------------------------------------------
    def _init_globals(self) -> None:
        self.write(self.symbols["heap_poison"], self.poison.to_bytes(4, self.order, signed=True))
        self.set_global("all_pages_array", self.end)
        self.set_global("num_pages", self.num_pages)
        self.set_global("kernel_heap_start", self.heap_start)
        self.set_global("kernel_heap_size", self.heap_size)
        self.write(self.symbols["uart_puts"], b"\x00\x48\x2d\xe9" * 8)

    def page_addr(self, index: int) -> int:
        return self.end + index * self.page_size

    def set_page(self, index: int, vaddr: Optional[int] = None, flags: Optional[int] = None,
                 nextpage: Optional[int] = None, prevpage: Optional[int] = None) -> None:
        pl = self.layouts.page
        base = self._o(self.page_addr(index))
        if vaddr is not None:
            write_field(self.mem, base, pl.vaddr, vaddr, self.endian)
        if flags is not None:
            word = ((pl.ALLOCATED if flags & 1 else 0) | (pl.KERNEL_PAGE if flags & 2 else 0)
                    | (pl.KERNEL_HEAP_PAGE if flags & 4 else 0))
            write_field(self.mem, base, pl.flags, word, self.endian)
        if nextpage is not None:
            write_field(self.mem, base, pl.nextpage, nextpage, self.endian)
        if prevpage is not None:
            write_field(self.mem, base, pl.prevpage, prevpage, self.endian)

    def _init_pages(self) -> None:
        kernel_pages = self.heap_start // PAGE
        heap_pages = self.heap_size // PAGE
        free = []
        for i in range(self.num_pages):
            if i < kernel_pages:
                flags = 3
            elif i < kernel_pages + heap_pages:
                flags = 5 if self.layouts.page.KERNEL_HEAP_PAGE else 3   # no heap-page bit: allocated|kernel
            else:
                flags = 0
                free.append(i)
            vaddr = 0 if self.vaddr_mapped_only and flags == 0 else i * PAGE
            self.set_page(i, vaddr=vaddr, flags=flags, nextpage=0, prevpage=0)
        for k, i in enumerate(free):
            self.set_page(i, nextpage=self.page_addr(free[k + 1]) if k + 1 < len(free) else 0,
                          prevpage=self.page_addr(free[k - 1]) if k else 0)
        self.free_page_indexes = free
        self.set_free_list(self.page_addr(free[0]) if free else 0, self.page_addr(free[-1]) if free else 0, len(free))

    def set_free_list(self, head: int, tail: int, size: int) -> None:
        pl = self.layouts.page_list
        base = self._o(self.symbols["free_pages"])
        if self.head_only_free_list:
            self.write_int(self.symbols["free_pages"], self.p, head)
            return
        write_field(self.mem, base, pl.field("head"), head, self.endian)
        write_field(self.mem, base, pl.field("tail"), tail, self.endian)
        write_field(self.mem, base, pl.field("size"), size, self.endian)

    # -- the reference allocator ----------------------------------------------------------------
    def _init_heap(self) -> None:
        # Addresses of free segments, kept in step with the headers so kmalloc's first fit
        # looks only at free candidates (the list walk made building big heaps quadratic).
        self._free = {self.heap_start}
        self.header(self.heap_start, 0, 0, 0, self.heap_size)
        self._poison_range(self.heap_start + self.hdr, self.heap_end)
        self.set_global("heap_segment_list_head", self.heap_start)
        self._write_stats()

    def _write_stats(self) -> None:
        st = self.layouts.stats
        base = self._o(self.symbols["heap_stats"])
        for f in st.fields:
            write_field(self.mem, base, f, self.stats[f.name], self.endian)

    def kmalloc(self, size: int) -> Optional[int]:
        need = round_up(max(size, 1) + self.off, 16)
        for addr in sorted(self._free):     # first fit, in address (= list) order
            seg_size = self.seg_field(addr, "segment_size")
            if self.seg_field(addr, "is_allocated") == 0 and seg_size >= need:
                if seg_size - need >= self.split_min:
                    new = addr + need
                    nxt = self.seg_field(addr, "next")
                    self.header(new, nxt, addr, 0, seg_size - need)
                    if nxt:
                        self.set_seg(nxt, prev=new)
                    self.set_seg(addr, next=new, segment_size=need)
                    self._free.add(new)
                    seg_size = need
                self.set_seg(addr, is_allocated=1)
                if self.back_pointer:
                    self.write_int(addr + self.off - self.p, self.p, addr)
                self._free.discard(addr)
                s = self.stats
                s["allocations"] += 1
                s["bytes_requested"] += size
                s["bytes_allocated"] += seg_size
                s["current_usage"] += seg_size
                s["peak_usage"] = max(s["peak_usage"], s["current_usage"])
                self._write_stats()
                return addr + self.off
        self.stats["failed"] += 1
        self._write_stats()
        return None

    def kfree(self, ptr: int) -> None:
        addr = ptr - self.off
        size = self.seg_field(addr, "segment_size")
        s = self.stats
        s["frees"] += 1
        s["bytes_freed"] += size
        s["current_usage"] -= size
        self._write_stats()
        self.set_seg(addr, is_allocated=0)
        self._free.add(addr)
        self._poison_range(addr + self.hdr, addr + size)
        nxt = self.seg_field(addr, "next")
        if nxt and self.seg_field(nxt, "is_allocated") == 0:
            self._absorb(addr, nxt)
        prv = self.seg_field(addr, "prev")
        if prv and self.seg_field(prv, "is_allocated") == 0:
            self._absorb(prv, addr)

    def _absorb(self, left: int, right: int) -> None:
        """``left`` swallows the free segment ``right`` that follows it."""
        after = self.seg_field(right, "next")
        self.set_seg(left, next=after,
                     segment_size=self.seg_field(left, "segment_size") + self.seg_field(right, "segment_size"))
        if after:
            self.set_seg(after, prev=left)
        self._free.discard(right)
        self._poison_range(right, right + self.hdr)

    # -- views ----------------------------------------------------------------------------------
    def elf_info(self, with_poison_section: bool = True) -> ElfInfo:
        sections = []
        if with_poison_section:
            sections.append(Section(".rodata", self.symbols["heap_poison"], 4,
                                    self.poison.to_bytes(4, self.order, signed=True)))
        rename = self.symbol_names
        elf = make_elf_info(self.p, self.endian, {rename.get(n, n): a for n, a in self.symbols.items()},
                            {rename.get(n, n): s for n, s in self.sizes.items()},
                            constants={"KERNEL_HEAP_SIZE": self.heap_size}, layouts=self.layouts,
                            image=(self.image_base, self.end), sections=sections)
        if self.head_only_free_list:
            elf.variables[rename.get("free_pages", "free_pages")] = ("Page *", self.p)
        return elf

    def reader(self, holes: Tuple[Tuple[int, int], ...] = ()) -> RangesReader:
        """All of memory, minus ``holes`` (start, end) that read as faults."""
        # RAM starts at 0 and has num_pages pages, like the real board's: zeros outside the
        # part the builder manages.
        ram_end = max(self.num_pages * PAGE, self.heap_end)
        ranges = [(0, bytes(self.image_base)), (self.image_base, bytes(self.mem)),
                  (self.heap_end, bytes(ram_end - self.heap_end))]
        for start, end in holes:
            out = []
            for base, data in ranges:
                stop = base + len(data)
                if end <= base or start >= stop:
                    out.append((base, data))
                    continue
                if start > base:
                    out.append((base, data[:start - base]))
                if end < stop:
                    out.append((end, data[end - base:]))
            ranges = out
        return RangesReader(ranges)

    def program(self, overrides: Optional[Overrides] = None, holes: Tuple[Tuple[int, int], ...] = (),
                block_size: int = 64 * 1024, elf: Optional[ElfInfo] = None) -> Program:
        return Program(elf or self.elf_info(), self.reader(holes), overrides, block_size=block_size)


def busy_kernel(pointer_size: int = 4, endian: str = "<", **kw) -> Tuple[SyntheticKernel, List[int]]:
    """A kernel after a few allocations and frees: used, free and coalesced segments."""
    k = SyntheticKernel(pointer_size, endian, **kw)
    ptrs = [k.kmalloc(n) for n in (24, 100, 7, 300, 64, 64, 1000, 16, 500)]
    k.kfree(ptrs[1])
    k.kfree(ptrs[4])
    k.kfree(ptrs[5])    # coalesces with ptrs[4]
    k.kfree(ptrs[7])
    live = [p for i, p in enumerate(ptrs) if i not in (1, 4, 5, 7)]
    return k, live


def prog_session(k: SyntheticKernel, elf: Optional[ElfInfo] = None, face: str = "cli"):
    """The command table's session over a synthetic kernel (no debugger): ADDR is a number."""
    from gdbext.frontends.session import Session

    class ProgSession(Session):
        def __init__(self) -> None:
            super().__init__()
            self.face, self.k, self.elf = face, k, elf

        def program(self) -> Program:
            if self._program is None:
                self._program = self.k.program(overrides=self.overrides(), elf=self.elf)
            return self._program

        def elf_path(self) -> str:
            return "<synthetic>"

        def reader(self):
            return self.k.reader()

        def evaluate(self, expression: str) -> int:
            return int(expression, 0)

    return ProgSession()
