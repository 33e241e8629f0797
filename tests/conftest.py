import os
import sys

import torch

# One intra-op thread: on 2 shared cores, OpenMP threads of two busy processes spin against each other and
# slow small-batch models down 100x; the suite is many small calls, so one thread is also the fastest.
torch.set_num_threads(1)
# Shared fixtures for the core tests live in tests/core/tests_core_helpers.py.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "core"))
