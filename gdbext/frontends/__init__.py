"""frontends layer of kheap."""
