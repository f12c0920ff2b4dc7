"""StyleGAN2 (Karras et al. 2020): the networks, official checkpoint formats, the discriminator and a small trainer."""
