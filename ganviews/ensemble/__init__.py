"""Paper Sec. 3.3 (Eq. 4-7): view groups, the alpha grid chosen on validation, size curves, bootstrap and scores."""
