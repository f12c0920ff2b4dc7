"""Paper Sec. 3.2: perturb w* (isotropic, PCA, style-mixing; coarse or fine layers), augment images, render and classify views."""
