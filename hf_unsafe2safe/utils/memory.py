"""Out of GPU memory: split the batch and retry, the one mechanism every batched model call uses."""

from __future__ import annotations

import logging


def split_on_oom(run, items: list, log: logging.Logger, what: str) -> list:
    """``run(items)`` -> one result per item. On a CUDA out-of-memory error the items are halved and each half
    retried (recursively); callers make every item's result independent of its batch (per-row generators,
    greedy decoding with left padding), so the halves give the same results as the whole. A single item that
    does not fit re-raises."""
    import torch

    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        if len(items) <= 1:
            raise
        torch.cuda.empty_cache()
        half = len(items) // 2
        log.warning("out of GPU memory %s %d; retrying as %d + %d", what, len(items), half, len(items) - half)
        return split_on_oom(run, items[:half], log, what) + split_on_oom(run, items[half:], log, what)
