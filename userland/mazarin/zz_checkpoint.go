package main

// kheapCheckpoint does nothing: debuggers break on it (qemu/launcher.py's GoTarget does) to
// look at the heap the dump just described.
//
// It lives in a file of its own named to sort last, so that the linker puts it at the end of
// package main's code, in a page with none of the allocator's code: QEMU 7.2 translates every
// page that holds a breakpoint one instruction at a time, and a breakpoint sharing a page with
// takeSegment makes the stress workload 20 times slower (tests/integration/test_variants_boot.py
// checks the page).
//
//go:noinline
func kheapCheckpoint(tag string) {
	checkpointsReached++
}

// checkpointsReached counts kheapCheckpoint calls (and keeps its body from being empty).
var checkpointsReached uint32
