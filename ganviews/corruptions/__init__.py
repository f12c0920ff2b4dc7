"""Corrupted and adversarial inputs (Chai et al. 2021, Sec. 4.1, Fig. 7): named conditions,
common corruptions and white-box attacks through the classifier's own preprocessing."""
