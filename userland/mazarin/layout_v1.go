//go:build !layoutv2

package main

import "unsafe"

// Mazarin's first layout: the tutorial's header in Go. 24 bytes on arm64 (no padding), payload
// right after it, so payloads are 8-aligned (segments and sizes stay multiples of 16).
type heapSegment struct {
	next        *heapSegment
	prev        *heapSegment
	isAllocated uint32
	segmentSize uint32
}

const heapLayout = "v1"

// payloadOffset is where a segment's payload starts, counted from its header.
const payloadOffset = unsafe.Sizeof(heapSegment{})

// segmentOf finds the header of the segment whose payload starts at payload.
func segmentOf(payload uintptr) *heapSegment {
	return (*heapSegment)(unsafe.Pointer(payload - payloadOffset))
}

// prepareUsed finishes a segment that is being handed out (nothing to do in this layout).
func prepareUsed(seg *heapSegment) {}

// markReserved: this layout has no reserved flag.
func markReserved(seg *heapSegment) {}

// clearReserved: this layout has no reserved flag.
func clearReserved(seg *heapSegment) {}
