import os
import sys

import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# Shared fixtures for the core tests live in tests/core/tests_core_helpers.py.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "core"))
