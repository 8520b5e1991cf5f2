package main

import "unsafe"

// The tutorial's kernel heap as the Mazarin port writes it in Go: one address-ordered,
// doubly-linked list of segments laid over a fixed region, best fit with splitting, kfree
// merging with free neighbours on both sides (every link fixed, unlike the tutorial).
// Additions for kheap's tests, as in the C kernel: free payloads are poisoned with 0xA5
// (heapPoison says so), so a use after free shows.

const (
	PAGE_SIZE        = 4096
	KERNEL_HEAP_SIZE = 1024 * 1024 // the heap's size: only this constant says it
	HEAP_ALIGNMENT   = 16
	HEAP_MIN_PAYLOAD = 16 // a split must leave a free segment at least this much payload
	HEAP_POISON_BYTE = 0xA5
)

// heapSegmentListHead is the first segment, at the start of the heap.
var heapSegmentListHead *heapSegment

// heapPoison is the byte free payloads are filled with (-1: no poisoning).
var heapPoison int32 = HEAP_POISON_BYTE

func alignUp(value, align uintptr) uintptr {
	return (value + align - 1) &^ (align - 1)
}

func segmentAt(addr uintptr) *heapSegment {
	return (*heapSegment)(unsafe.Pointer(addr))
}

func addressOf(seg *heapSegment) uintptr {
	return uintptr(unsafe.Pointer(seg))
}

func payloadOf(seg *heapSegment) unsafe.Pointer {
	return unsafe.Pointer(addressOf(seg) + payloadOffset)
}

// fill writes n copies of b from addr on.
func fill(addr uintptr, b byte, n uintptr) {
	if n == 0 {
		return
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(addr)), n)
	for i := range buf {
		buf[i] = b
	}
}

// poisonFree fills a free segment's payload (everything after its header) with the poison.
func poisonFree(seg *heapSegment) {
	if heapPoison >= 0 {
		header := unsafe.Sizeof(heapSegment{})
		fill(addressOf(seg)+header, byte(heapPoison), uintptr(seg.segmentSize)-header)
	}
}

// poisonHeader poisons a header absorbed by a merge (it is part of a free payload now).
func poisonHeader(seg *heapSegment) {
	if heapPoison >= 0 {
		fill(addressOf(seg), byte(heapPoison), unsafe.Sizeof(heapSegment{}))
	}
}

// heapInit lays one free segment over the whole heap.
//
//go:noinline
func heapInit(heapStart uintptr) {
	first := segmentAt(heapStart)
	first.next = nil
	first.prev = nil
	first.isAllocated = 0
	markFree(first)
	first.segmentSize = KERNEL_HEAP_SIZE
	poisonFree(first)
	heapSegmentListHead = first
}

// markFree clears the flags a used segment may carry (isReserved in the v2 layout).
func markFree(seg *heapSegment) {
	seg.isAllocated = 0
	clearReserved(seg)
}

// takeSegment finds the smallest free segment that fits size bytes, splits off the rest when
// it can stand alone, and marks it allocated. nil when nothing fits.
func takeSegment(size uint32) *heapSegment {
	if size == 0 || size > KERNEL_HEAP_SIZE {
		return nil
	}
	need := alignUp(payloadOffset+uintptr(size), HEAP_ALIGNMENT)
	var best *heapSegment
	bestSize := ^uintptr(0)
	for curr := heapSegmentListHead; curr != nil; curr = curr.next {
		currSize := uintptr(curr.segmentSize)
		if curr.isAllocated != 0 || currSize < need || currSize >= bestSize {
			continue
		}
		best = curr
		bestSize = currSize
		if bestSize == need {
			break
		}
	}
	if best == nil {
		return nil
	}
	if uintptr(best.segmentSize)-need >= payloadOffset+HEAP_MIN_PAYLOAD {
		rest := segmentAt(addressOf(best) + need)
		rest.next = best.next
		rest.prev = best
		markFree(rest)
		rest.segmentSize = best.segmentSize - uint32(need)
		if rest.next != nil {
			rest.next.prev = rest
		}
		best.next = rest
		best.segmentSize = uint32(need)
	}
	best.isAllocated = 1
	prepareUsed(best)
	return best
}

// kmalloc returns size bytes from the heap, or nil.
//
//go:noinline
func kmalloc(size uint32) unsafe.Pointer {
	seg := takeSegment(size)
	if seg == nil {
		return nil
	}
	return payloadOf(seg)
}

// kmallocReserved is kmalloc for memory that must never be freed (v2 marks it).
//
//go:noinline
func kmallocReserved(size uint32) unsafe.Pointer {
	seg := takeSegment(size)
	if seg == nil {
		return nil
	}
	markReserved(seg)
	return payloadOf(seg)
}

// kcalloc returns count*size zeroed bytes, or nil.
//
//go:noinline
func kcalloc(count, size uint32) unsafe.Pointer {
	total := uint64(count) * uint64(size)
	if total > KERNEL_HEAP_SIZE {
		return nil
	}
	seg := takeSegment(uint32(total))
	if seg == nil {
		return nil
	}
	fill(uintptr(payloadOf(seg)), 0, uintptr(seg.segmentSize)-payloadOffset)
	return payloadOf(seg)
}

// kfree releases a block and merges it with free neighbours on both sides. It trusts its
// caller: a pointer that is not a live block corrupts the heap instead of failing.
//
//go:noinline
func kfree(ptr unsafe.Pointer) {
	if ptr == nil {
		return
	}
	seg := segmentOf(uintptr(ptr))
	markFree(seg)
	poisonFree(seg)
	for seg.next != nil && seg.next.isAllocated == 0 {
		absorbed := seg.next
		seg.segmentSize += absorbed.segmentSize
		seg.next = absorbed.next
		if seg.next != nil {
			seg.next.prev = seg
		}
		poisonHeader(absorbed)
	}
	for seg.prev != nil && seg.prev.isAllocated == 0 {
		into := seg.prev
		into.segmentSize += seg.segmentSize
		into.next = seg.next
		if into.next != nil {
			into.next.prev = into
		}
		poisonHeader(seg)
		seg = into
	}
}

// krealloc keeps the block when it is big enough, otherwise moves it (the old one is freed).
//
//go:noinline
func krealloc(ptr unsafe.Pointer, size uint32) unsafe.Pointer {
	if ptr == nil {
		return kmalloc(size)
	}
	if size == 0 {
		kfree(ptr)
		return nil
	}
	old := segmentOf(uintptr(ptr))
	oldPayload := uintptr(old.segmentSize) - payloadOffset
	if uintptr(size) <= oldPayload {
		return ptr
	}
	moved := kmalloc(size)
	if moved == nil {
		return nil
	}
	copy(unsafe.Slice((*byte)(moved), oldPayload), unsafe.Slice((*byte)(ptr), oldPayload))
	kfree(ptr)
	return moved
}
