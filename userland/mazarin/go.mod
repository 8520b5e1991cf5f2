module kheap/userland/mazarin

go 1.19
