"""How many images an inversion evaluates at once: the memory model and the OOM back-off.

Per objective evaluation an image costs the activations of one forward and one backward pass
of G, LPIPS and (with encoder consistency) the encoder; that cost grows with the resolution
squared and does not depend on the weights' values. Rather than a table per architecture,
:func:`auto_batch_size` measures it on the device: one evaluation at 1 and at 2 images, the
difference of the two peaks is the per-image cost (the first also holds the fixed part:
weights, workspace, cached targets), and the batch is as many images as fit into
``headroom`` of the free memory. :class:`ChunkedEvaluation` is the safety net: an evaluation
that runs out of memory is retried in halves (and the halved size kept), so no optimiser
state is lost and results only change by the networks' batch-size rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

Evaluate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def auto_batch_size(
    fn: Evaluate,
    x: torch.Tensor,
    index: torch.Tensor,
    *,
    limit: int,
    headroom: float = 0.85,
    cpu_default: int = 16,
) -> int:
    """Images per evaluation that fit the free memory of ``x.device`` (≤ ``limit``).

    ``fn(x[:k], index[:k])`` is evaluated for k = 1 and 2 (needs two problems; one gives 1).
    On the CPU there is no allocator to ask: ``min(cpu_default, limit)``.
    """
    device = x.device
    if device.type != "cuda":
        return max(1, min(cpu_default, limit))
    if limit <= 1 or x.shape[0] < 2:
        return 1
    peaks = []
    for k in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(x[:k], index[:k])
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_image = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_image, 0)
    free, _ = torch.cuda.mem_get_info(device)
    fit = int((headroom * free - fixed) // per_image)
    size = max(1, min(limit, fit))
    log.info(
        "auto batch: %.2f GiB per image per evaluation, %.2f GiB free → %d images (limit %d)",
        per_image / 2**30,
        free / 2**30,
        size,
        limit,
    )
    return size


class ChunkedEvaluation:
    """``fn`` evaluated ``chunk`` rows at a time; on out-of-memory the chunk halves and retries.

    Rows are independent, so splitting a call changes nothing but the batch-size rounding
    of the networks; the optimiser sees one ``(loss, grad)`` for all rows as before.
    """

    def __init__(self, fn: Evaluate, chunk: int) -> None:
        self.fn = fn
        self.chunk = max(1, int(chunk))

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            try:
                parts = [
                    self.fn(x[i : i + self.chunk], index[i : i + self.chunk])
                    for i in range(0, x.shape[0], self.chunk)
                ]
            except torch.OutOfMemoryError:
                if self.chunk == 1:
                    raise
                self.chunk = max(1, min(self.chunk, x.shape[0]) // 2)
                if x.is_cuda:
                    torch.cuda.empty_cache()
                log.warning("out of memory: evaluating %d images at a time", self.chunk)
                continue
            if len(parts) == 1:
                return parts[0]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
