import os
import sys

# tests/unit is not a package: make the synthetic kernel builder importable as `heapbuilder`.
sys.path.insert(0, os.path.dirname(__file__))
