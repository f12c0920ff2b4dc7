"""Foundations every stage shares: errors, config dataclass I/O, devices and seeds, weight files, image decoding."""
