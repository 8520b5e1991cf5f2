package main

import "unsafe"

// Page metadata as the Mazarin port keeps it: one Page per 4 KiB page of "physical" memory
// (here: the process's address space from 0 up to the end of machineMemory), in an array at
// the end of the kernel image (here: the start of machineMemory, page-aligned). Flags are
// packed by hand: bit 0 allocated, bit 1 kernel page, no heap-page bit (the heap's pages are
// allocated|kernel). vaddrMapped is set only on the pages the kernel maps (its image, the
// page array and the heap) and stays 0 on the others. Free pages are pushed on the head of
// freePages, so the list runs from high addresses to low.
type Page struct {
	vaddrMapped uintptr
	flags       uint32
	next        *Page
	prev        *Page
}

const (
	PAGE_FLAG_ALLOCATED = 1 << 0
	PAGE_FLAG_KERNEL    = 1 << 1
	MACHINE_MEMORY_SIZE = 6 * 1024 * 1024
)

// machineMemory stands in for the RAM above the kernel image: page array, heap, free pages.
var machineMemory [MACHINE_MEMORY_SIZE]byte

var freePages *Page           // free-page list head
var allPagesArrayBase uintptr // the page array (page metadata starts after the kernel)
var numPages uint32           // entries in the page array

func pageAt(index uintptr) *Page {
	return (*Page)(unsafe.Pointer(allPagesArrayBase + index*unsafe.Sizeof(Page{})))
}

func pushFree(page *Page) {
	page.next = freePages
	page.prev = nil
	if freePages != nil {
		freePages.prev = page
	}
	freePages = page
}

// memInit builds the page array and the heap; returns where the heap starts.
//
//go:noinline
func memInit() uintptr {
	base := uintptr(unsafe.Pointer(&machineMemory[0]))
	end := (base + MACHINE_MEMORY_SIZE) &^ (PAGE_SIZE - 1)
	kernelEnd := alignUp(base, PAGE_SIZE) // "__end"

	numPages = uint32(end / PAGE_SIZE)
	allPagesArrayBase = kernelEnd
	arrayEnd := allPagesArrayBase + uintptr(numPages)*unsafe.Sizeof(Page{})
	fill(allPagesArrayBase, 0, arrayEnd-allPagesArrayBase)
	heapStart := alignUp(arrayEnd, PAGE_SIZE)
	kernelPages := heapStart / PAGE_SIZE
	heapPages := uintptr(KERNEL_HEAP_SIZE / PAGE_SIZE)

	freePages = nil
	for i := uintptr(0); i < uintptr(numPages); i++ {
		page := pageAt(i)
		if i < kernelPages+heapPages {
			page.vaddrMapped = i * PAGE_SIZE // identity-mapped: kernel image, page array, heap
			page.flags = PAGE_FLAG_ALLOCATED | PAGE_FLAG_KERNEL
		} else {
			pushFree(page)
		}
	}
	heapInit(heapStart)
	return heapStart
}

// allocPage hands out the free page at the head of the list (zeroed), or nil.
//
//go:noinline
func allocPage() unsafe.Pointer {
	page := freePages
	if page == nil {
		return nil
	}
	freePages = page.next
	if freePages != nil {
		freePages.prev = nil
	}
	page.next = nil
	page.prev = nil
	page.flags = PAGE_FLAG_ALLOCATED | PAGE_FLAG_KERNEL
	index := (uintptr(unsafe.Pointer(page)) - allPagesArrayBase) / unsafe.Sizeof(Page{})
	addr := index * PAGE_SIZE
	fill(addr, 0, PAGE_SIZE)
	return unsafe.Pointer(addr)
}

// freePage puts a page back on the free list. It trusts its caller (the pages scenario
// frees a heap page by mistake).
//
//go:noinline
func freePage(ptr unsafe.Pointer) {
	page := pageAt(uintptr(ptr) / PAGE_SIZE)
	page.flags = 0
	pushFree(page)
}
