"""Behaviour fixtures: kheap output recorded before a refactor (see record.py)."""
