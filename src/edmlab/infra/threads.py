"""torch's intra-op thread count for the duration of a block."""
import contextlib

import torch


@contextlib.contextmanager
def num_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (None: unchanged), the caller's count restored after. Tiny
    tensor operations (point clouds, the exact ODE solve, 8×8 digits) run fastest on one thread: intra-op threads
    only add overhead there, and on a shared machine they wait on each other."""
    threads = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
