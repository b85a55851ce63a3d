"""Fixtures shared by the test modules, and the Triton interpreter switch."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton backend's tests run its kernel in Triton's CPU interpreter. triton.jit reads
    # this when a function is defined, and Lightning imports triton.language (whose own helpers
    # are jit functions) long before that test module, so it is set here, first.
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def single_thread():
    """One intra-op torch thread for the test: tiny models gain nothing from more, and on a
    busy shared CPU the barriers between two threads can stall every step."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
