"""Suite-wide settings: one torch thread per test process.

Why: the models under test are tiny, so a second thread buys little, while several test processes
(subprocess CLIs, dask workers, torchrun ranks) sharing CI's 2 cores oversubscribe badly with two threads
each. Individual test modules may still set their own thread counts.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
