"""Failed attempts per image, so a run can give up on an image after ``max_attempts`` failures
(``orchestration.max_image_attempts``, ``ganviews invert --max-attempts``).

The count is the extra array ``attempts`` (``[N]`` int32, 0 until an item first fails; one
file per shard like every array), created the first time an item fails and raised by one on
every :meth:`~storage.latents.LatentStore.mark_failed`. Stores made before it have no such
array and read as 0. A failed item counts as at least one attempt whatever the array says
(an old store's failures were attempted once), so ``max_attempts=1`` is exactly "do not
retry failed items" (``retry_failed=False``). A mixin of :class:`storage.latents.LatentStore`.
"""

from __future__ import annotations

import numpy as np

from storage.errors import StoreError
from storage.integrity import decoding
from storage.latent_layout import FAILED, PENDING

ATTEMPTS = "attempts"


def check_max_attempts(max_attempts: int | None) -> int | None:
    """``max_attempts`` if it is None (unlimited) or an integer ≥ 1, else StoreError."""
    if max_attempts is None:
        return None
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, (int, np.integer)):
        raise StoreError(f"max_attempts must be an integer ≥ 1 or None, got {max_attempts!r}")
    if max_attempts < 1:
        raise StoreError(f"max_attempts must be ≥ 1 (or None: unlimited), got {max_attempts}")
    return int(max_attempts)


class FailedAttempts:
    """Count failed attempts per item and tell which failed items a run gives up on."""

    def attempts(self) -> np.ndarray:
        """``[N]`` failed attempts of every item (0: never failed, or a store made before counts)."""
        arr = self._array(ATTEMPTS, missing_ok=True)
        if arr is None:
            return np.zeros(self.n_images, np.int64)
        with decoding(self, ATTEMPTS, 0, self.n_images):
            return np.asarray(arr[:]).astype(np.int64)

    def given_up(self, max_attempts: int | None) -> np.ndarray:
        """Failed items that reached ``max_attempts`` (None: unlimited, so none): not retried."""
        status = self._status()
        return np.flatnonzero((status == FAILED) & ~self._retryable(status, max_attempts))

    def _retryable(self, status: np.ndarray, max_attempts: int | None) -> np.ndarray:
        """Mask of the items a run processes: pending ones, and failed ones below the limit."""
        limit = check_max_attempts(max_attempts)
        failed = status == FAILED
        if limit is not None and failed.any():
            failed &= np.maximum(self.attempts(), 1) < limit
        return (status == PENDING) | failed

    def _count_failures(self, idx_sorted: np.ndarray) -> None:
        """One more failed attempt for the sorted ``idx_sorted`` (the caller holds their locks)."""
        before = self._read_rows(ATTEMPTS, idx_sorted).astype(np.int32)
        self._write_rows(ATTEMPTS, idx_sorted, before + 1)
