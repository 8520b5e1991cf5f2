"""core layer of kheap."""
