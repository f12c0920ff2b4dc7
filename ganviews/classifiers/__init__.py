"""Classifiers: architectures, loading official weights, training and fine-tuning on GAN images (paper Eq. 8)."""
