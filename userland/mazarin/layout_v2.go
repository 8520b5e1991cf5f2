//go:build layoutv2

package main

import "unsafe"

// Mazarin's later layout: a reserved flag after isAllocated (32 bytes with padding,
// segmentSize at 24), payloads 16-aligned, and the header's address stored in the 8 bytes
// just before the payload so that kfree finds it from the payload alone:
//
//	header (32) | padding (8) | header address (8) | payload (16-aligned) ...
type heapSegment struct {
	next        *heapSegment
	prev        *heapSegment
	isAllocated uint32
	isReserved  uint32 // 1: never to be freed (kmallocReserved)
	segmentSize uint32
}

const heapLayout = "v2"

// payloadOffset: the first 16-aligned offset past the header with room for the back pointer.
const payloadOffset = (unsafe.Sizeof(heapSegment{}) + 8 + HEAP_ALIGNMENT - 1) &^ (HEAP_ALIGNMENT - 1)

// segmentOf reads the header address kmalloc stored at payload-8.
func segmentOf(payload uintptr) *heapSegment {
	return (*heapSegment)(unsafe.Pointer(*(*uintptr)(unsafe.Pointer(payload - 8))))
}

// prepareUsed stores the header's address just before the payload.
func prepareUsed(seg *heapSegment) {
	addr := uintptr(unsafe.Pointer(seg))
	*(*uintptr)(unsafe.Pointer(addr + payloadOffset - 8)) = addr
}

func markReserved(seg *heapSegment) { seg.isReserved = 1 }

func clearReserved(seg *heapSegment) { seg.isReserved = 0 }
