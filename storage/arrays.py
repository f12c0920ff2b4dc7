"""The names of the latent store's extra arrays (the catalog's one home for them).

- :data:`ALIGNED` ``[N, C, R, R]`` uint8: the aligned image the inversion actually fitted;
- :data:`MASK` ``[N, 1, R, R]`` uint8: 255 where the aligned image is known;
- :data:`RECON` ``[N, C, R, R]`` uint8: the reconstruction G(w*);
- :func:`view_array` ``views/<method>/<setting or "none">`` ``[N, V, C, r, r]`` uint8: persisted views.

A condition's store (corrupted copies, docs/corruptions.md) adds per item: ``corruption/done``
(uint8, 1 once its corrupted ``images/aligned`` is stored; written last), the attacked
classifier's predictions on the clean and the corrupted image ``corruption/clean_pred`` /
``corruption/adv_pred`` (int64, −1 for corruptions), the attack's ``corruption/target``
(int64, −1 when untargeted) and ``corruption/success`` (uint8).
"""

from __future__ import annotations

ALIGNED = "images/aligned"
MASK = "images/mask"
RECON = "images/recon"
INVERSION_ARRAYS = (ALIGNED, MASK, RECON)
VIEWS_PREFIX = "views/"
CORRUPTION_DONE = "corruption/done"
CORRUPTION_CLEAN_PRED = "corruption/clean_pred"
CORRUPTION_ADV_PRED = "corruption/adv_pred"
CORRUPTION_TARGET = "corruption/target"
CORRUPTION_SUCCESS = "corruption/success"


def view_array(method: str, setting: str = "") -> str:
    """The store array of one view group's persisted images."""
    return f"{VIEWS_PREFIX}{method}/{setting or 'none'}"
