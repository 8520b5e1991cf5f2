package main

import (
	"bufio"
	"os"
	"strconv"
	"unsafe"
)

// The target's own dump of its heap, in the C kernel's format (docs/kernel-interface.md)
// without the KHEAP-STATS line (Mazarin keeps no counters). It only reads the heap, is bounded
// the same way, and is written before kheapCheckpoint is called, so a debugger stopped there
// sees exactly the heap the dump describes.

var out = bufio.NewWriterSize(os.Stdout, 64*1024)

func say(parts ...string) {
	for _, p := range parts {
		out.WriteString(p)
	}
	out.WriteByte('\n')
}

func hex(v uintptr) string {
	s := strconv.FormatUint(uint64(v), 16)
	for len(s) < 16 {
		s = "0" + s
	}
	return "0x" + s
}

func dec(v uint64) string { return strconv.FormatUint(v, 10) }

func dumpSegments(heapStart uintptr) int {
	heapEnd := heapStart + KERNEL_HEAP_SIZE
	maxSegments := KERNEL_HEAP_SIZE / int(payloadOffset)
	header := unsafe.Sizeof(heapSegment{})
	previous := uintptr(0)
	count := 0
	for seg := heapSegmentListHead; seg != nil; seg = seg.next {
		addr := addressOf(seg)
		stop := ""
		switch {
		case addr < heapStart || addr+header > heapEnd:
			stop = "outside-heap"
		case addr%HEAP_ALIGNMENT != 0:
			stop = "misaligned"
		case count > 0 && addr <= previous:
			stop = "backwards"
		case count >= maxSegments:
			stop = "limit"
		}
		if stop != "" {
			say("KHEAP-SEG-STOP reason=", stop, " addr=", hex(addr))
			break
		}
		state := "bad(" + dec(uint64(seg.isAllocated)) + ")"
		switch seg.isAllocated {
		case 0:
			state = "free"
		case 1:
			state = "used"
		}
		say("KHEAP-SEG addr=", hex(addr), " size=", dec(uint64(seg.segmentSize)), " state=", state)
		count++
		previous = addr
	}
	return count
}

// checkpoint prints the dump, then calls kheapCheckpoint (zz_checkpoint.go): the place to stop.
func checkpoint(tag string) {
	say("KHEAP-CHECKPOINT BEGIN tag=", tag)
	count := 0
	if heapSegmentListHead != nil {
		count = dumpSegments(addressOf(heapSegmentListHead))
	}
	say("KHEAP-CHECKPOINT END tag=", tag, " segments=", dec(uint64(count)))
	out.Flush()
	kheapCheckpoint(tag)
}
