"""The names of the latent store's extra arrays (the catalog's one home for them).

- :data:`ALIGNED` ``[N, C, R, R]`` uint8: the aligned image the inversion actually fitted;
- :data:`MASK` ``[N, 1, R, R]`` uint8: 255 where the aligned image is known;
- :data:`RECON` ``[N, C, R, R]`` uint8: the reconstruction G(w*);
- :func:`view_array` ``views/<method>/<setting or "none">`` ``[N, V, C, r, r]`` uint8: persisted views.
"""

from __future__ import annotations

ALIGNED = "images/aligned"
MASK = "images/mask"
RECON = "images/recon"
INVERSION_ARRAYS = (ALIGNED, MASK, RECON)
VIEWS_PREFIX = "views/"


def view_array(method: str, setting: str = "") -> str:
    """The store array of one view group's persisted images."""
    return f"{VIEWS_PREFIX}{method}/{setting or 'none'}"
