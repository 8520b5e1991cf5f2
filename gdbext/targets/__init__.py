"""targets layer of kheap."""
