// Command mazarin is a userland stand-in for the Mazarin kernel (the jsandler18 tutorial's
// heap and page metadata ported to Go), for kheap's tests: the same globals, types and
// layouts, over a static array instead of RAM, run under qemu-aarch64 with its gdbstub.
//
//	mazarin [SCENARIO] [--preinit] [--exit]
//
// SCENARIO (default clean, or $KHEAP_SCENARIO): clean stress overflow backlink cycle wild uaf
// pages crash. --preinit stops before the page array and heap exist (an empty checkpoint).
// After KHEAP-READY it idles like the kernel, unless --exit. Build with -tags layoutv2 for
// the later 32-byte header. See userland/README.md.
package main

import (
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"
)

func main() {
	debug.SetGCPercent(-1) // the heap's pointers live outside Go's heap: never collect
	scenario := os.Getenv("KHEAP_SCENARIO")
	preinit, exit := false, false
	for _, arg := range os.Args[1:] {
		switch arg {
		case "--preinit":
			preinit = true
		case "--exit":
			exit = true
		default:
			scenario = arg
		}
	}
	if scenario == "" {
		scenario = "clean"
	}
	run, ok := scenarios[scenario]
	if !ok {
		names := make([]string, 0, len(scenarios))
		for name := range scenarios {
			names = append(names, name)
		}
		sort.Strings(names)
		os.Stderr.WriteString("mazarin: unknown scenario " + scenario + " (known: " + strings.Join(names, " ") + ")\n")
		os.Exit(2)
	}

	say("KHEAP-BOOT arch=aarch64 scenario=", scenario, " target=mazarin layout=", heapLayout,
		" pid=", dec(uint64(os.Getpid())))
	if preinit {
		checkpoint("preinit") // nothing set up yet: an empty dump
		scenario = "preinit"
	} else {
		heapStart := memInit()
		poison := "off"
		if heapPoison >= 0 {
			poison = "0xa5"
		}
		say("KHEAP-LAYOUT end=", hex(allPagesArrayBase), " num_pages=", dec(uint64(numPages)),
			" heap_start=", hex(heapStart), " heap_size=", dec(KERNEL_HEAP_SIZE), " poison=", poison)
		run()
	}
	say("KHEAP-READY scenario=", scenario)
	out.Flush()
	if exit {
		return
	}
	for {
		time.Sleep(time.Hour)
	}
}
