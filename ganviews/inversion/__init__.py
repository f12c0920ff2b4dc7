"""Paper Sec. 3.1: align an image, encode it to w+ (Eq. 2-3), refine with L-BFGS on masked L1 + LPIPS + a latent term (Eq. 1)."""
