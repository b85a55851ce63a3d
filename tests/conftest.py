"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op torch thread for the test: tiny models gain nothing from more, and on a
    busy shared CPU the barriers between two threads can stall every step."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
