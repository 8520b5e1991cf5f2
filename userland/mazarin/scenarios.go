package main

import "unsafe"

// The workloads, as in kernel/src/scenarios_*.c: healthy ones, and corruptions made the way
// real bugs make them, never by poking the allocator's internals directly.

var scenarios = map[string]func(){
	"clean":    scenarioClean,
	"stress":   scenarioStress,
	"overflow": scenarioOverflow,
	"backlink": scenarioBacklink,
	"cycle":    scenarioCycle,
	"wild":     scenarioWild,
	"uaf":      scenarioUaf,
	"pages":    scenarioPages,
	"crash":    scenarioCrash,
}

// Roots: what the program still references after a workload.
var roots [16]unsafe.Pointer

func bytesAt(p unsafe.Pointer, n int) []byte { return unsafe.Slice((*byte)(p), n) }

func allocFilled(size uint32, b byte) unsafe.Pointer {
	p := kmalloc(size)
	fill(uintptr(p), b, uintptr(size))
	return p
}

func scenarioClean() {
	name := kmalloc(20)
	table := kcalloc(32, 4)
	buffer := kmalloc(200)
	scratch1 := kmalloc(48)
	scratch2 := kmalloc(100)
	copy(bytesAt(name, 20), "kheap-clean\x00")
	words := unsafe.Slice((*uint32)(table), 32)
	for i := range words {
		words[i] = uint32(i * i)
	}
	table = krealloc(table, 64*4) // grows: moves, frees the old block
	kfree(scratch1)
	buffer = krealloc(buffer, 120) // shrinks: stays in place
	fill(uintptr(buffer), 'b', 120)
	roots[0] = name
	roots[1] = table
	roots[2] = buffer
	roots[3] = kcalloc(10, 12)
	roots[4] = kmalloc(1000)
	kfree(scratch2)
	roots[5] = kmalloc(24)          // best fit: lands in a freed hole
	roots[6] = kmallocReserved(256) // v2: isReserved=1 on its header
	page := allocPage()             // the page allocator works too
	freePage(page)
	checkpoint("clean")
}

const (
	STRESS_LIVE = 5200
	STRESS_SEED = 0x4B484541
)

var stressBlocks [STRESS_LIVE]unsafe.Pointer

func randNext(state *uint32) uint32 {
	x := *state
	x ^= x << 13
	x ^= x >> 17
	x ^= x << 5
	*state = x
	return x
}

// A seeded random workload like the C kernel's: thousands of used segments, hundreds of
// free holes.
func scenarioStress() {
	state := uint32(STRESS_SEED)
	live := 0
	for live < STRESS_LIVE {
		r := randNext(&state)
		size := 1 + randNext(&state)%48
		if live == 0 || r%100 < 65 {
			var p unsafe.Pointer
			if r%8 == 0 {
				p = kcalloc(1, size)
			} else {
				p = kmalloc(size)
			}
			if p == nil {
				break
			}
			stressBlocks[live] = p
			live++
		} else {
			victim := randNext(&state) % uint32(live)
			if r%10 == 0 {
				if p := krealloc(stressBlocks[victim], size+16); p != nil {
					stressBlocks[victim] = p
				}
			} else {
				kfree(stressBlocks[victim])
				live--
				stressBlocks[victim] = stressBlocks[live]
			}
		}
	}
	for i := 0; i < live; i++ {
		if randNext(&state)%5 == 0 {
			kfree(stressBlocks[i])
			stressBlocks[i] = nil
		}
	}
	checkpoint("stress")
}

// An application keeps its objects on its own doubly-linked list; each object starts with a
// link. Its containerOf helper was copy-pasted from kfree and subtracts the allocator's
// payload offset, so every "object link" it returns is really the object's heap header:
// list writes through it land on the header's next/prev.
type appLink struct {
	next *appLink
	prev *appLink
}

var appListSentinel appLink // the application's list head, outside the heap

func appLinkOf(object unsafe.Pointer) *appLink {
	return (*appLink)(unsafe.Pointer(uintptr(object) - payloadOffset)) // BUG
}

var overflowBlocks [3]unsafe.Pointer

// A 72-character log line copied into a 24-byte block runs over the next header.
func scenarioOverflow() {
	const message = "sensor 3 reported an out-of-range reading; retrying calibration later..\x00"
	line := kmalloc(24)
	overflowBlocks[0] = line
	overflowBlocks[1] = allocFilled(64, 'n') // the victim right after line
	overflowBlocks[2] = allocFilled(64, 'm')
	copy(bytesAt(line, len(message)), message) // BUG: no bounds check
	checkpoint("overflow")
}

var backlinkBlocks [4]unsafe.Pointer

// The third segment's prev ends up naming the first.
func scenarioBacklink() {
	for i := range backlinkBlocks {
		backlinkBlocks[i] = allocFilled(48, byte('a'+i))
	}
	appLinkOf(backlinkBlocks[2]).prev = appLinkOf(backlinkBlocks[0])
	checkpoint("backlink")
}

var cycleBlocks [4]unsafe.Pointer

// The application closes its list into a ring: the last segment's next is the first.
func scenarioCycle() {
	for i := range cycleBlocks {
		cycleBlocks[i] = allocFilled(48, byte('c'+i))
	}
	appLinkOf(cycleBlocks[3]).next = appLinkOf(cycleBlocks[0])
	checkpoint("cycle")
}

var wildBlocks [4]unsafe.Pointer

// The application ends its list at its sentinel: a segment's next points outside the heap.
func scenarioWild() {
	for i := range wildBlocks {
		wildBlocks[i] = allocFilled(48, byte('w'+i))
	}
	appLinkOf(wildBlocks[1]).next = &appListSentinel
	checkpoint("wild")
}

type session struct {
	id       uint32
	refcount uint32
	state    uint32
	name     [20]byte
}

var uafBlocks [3]unsafe.Pointer

// A late callback updates a session after it was freed: writes over a free payload's poison.
func scenarioUaf() {
	uafBlocks[0] = allocFilled(32, 'x')
	s := (*session)(kcalloc(1, uint32(unsafe.Sizeof(session{}))))
	uafBlocks[2] = allocFilled(32, 'y')
	s.id = 7
	s.refcount = 1
	uafBlocks[1] = unsafe.Pointer(s)
	kfree(unsafe.Pointer(s))
	s.state = 3 // BUG: the session is gone
	s.refcount = 0
	checkpoint("uaf")
}

var pagesBlocks [2]unsafe.Pointer

// A kmalloc'd buffer handed to freePage: its heap page is marked free and heads freePages.
func scenarioPages() {
	pagesBlocks[0] = allocFilled(256, 'p')
	pagesBlocks[1] = allocFilled(3000, 'q')
	freePage(pagesBlocks[1]) // BUG: should have been kfree
	checkpoint("pages")
}

// UNASSIGNED_ADDRESS: nothing is mapped there in the process (qemu-user reports SIGSEGV).
const UNASSIGNED_ADDRESS = 0xDEAD0000

var crashBlocks [4]unsafe.Pointer

// The application poisons an unlinked object's next like Linux's list_del; the next kmalloc
// walks into it and the process takes a SIGSEGV inside takeSegment.
func scenarioCrash() {
	for i := 0; i < 3; i++ {
		crashBlocks[i] = allocFilled(48, byte('k'+i))
	}
	appLinkOf(crashBlocks[1]).next = (*appLink)(unsafe.Pointer(uintptr(UNASSIGNED_ADDRESS)))
	checkpoint("crash")
	crashBlocks[3] = kmalloc(64) // faults
}
