"""ganviews: test-time ensembling with deep generative views (Chai et al., CVPR 2021).

The library is pure PyTorch + numpy, grouped by pipeline stage:

- ``ganviews.stylegan``: the generator (networks, checkpoint loading, discriminator, training)
- ``ganviews.inversion``: alignment, the RGBM encoder, LPIPS, batched L-BFGS, ``invert``
- ``ganviews.views``: latent perturbations, image augmentations, rendering + classifying views
- ``ganviews.classifiers``: classifier architectures, loading, training / fine-tuning (Eq. 8)
- ``ganviews.ensemble``: view groups, alpha cross-validation, size curves, bootstrap, scores
- ``ganviews.report``: result tables, Markdown / HTML report, plots
- ``ganviews.genrep``: GenRep multiview sampling, contrastive training, linear probe (Jahanian et al.)
- ``ganviews.core``: errors, config dataclass I/O, devices and seeds, weight files, images

It knows nothing of Prefect, Zarr or Parquet: the ``storage`` package owns all artefacts,
``tasks``/``flows`` wire the two together. The names below are importable from the top
level (``from ganviews import load_generator, invert``); they load on first use so that
``import ganviews`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_generator": "ganviews.stylegan.generator",
    "save_generator": "ganviews.stylegan.generator",
    "Generator": "ganviews.stylegan.generator",
    "GeneratorConfig": "ganviews.stylegan.generator",
    "SynthesisOptions": "ganviews.stylegan.fused",
    "load_encoder": "ganviews.inversion.encoder",
    "train_encoder": "ganviews.inversion.encoder_training",
    "load_perceptual": "ganviews.inversion.perceptual",
    "align_image": "ganviews.inversion.align",
    "AlignConfig": "ganviews.inversion.align",
    "invert": "ganviews.inversion.invert",
    "InversionConfig": "ganviews.inversion.invert",
    "perturb": "ganviews.views.perturb",
    "compute_pca_stats": "ganviews.views.perturb",
    "ViewConfig": "ganviews.views.render",
    "render_and_classify": "ganviews.views.render",
    "load_classifier": "ganviews.classifiers.checkpoints",
    "build_classifier": "ganviews.classifiers.model",
    "train_classifier": "ganviews.classifiers.training",
    "evaluate": "ganviews.ensemble.evaluate",
    "EnsembleConfig": "ganviews.ensemble.evaluate",
    "load_image": "ganviews.core.images",
    "SamplingConfig": "ganviews.genrep.sampling",
    "sample_multiview": "ganviews.genrep.sampling",
    "ContrastiveConfig": "ganviews.genrep.contrastive",
    "train_contrastive": "ganviews.genrep.contrastive",
    "ProbeConfig": "ganviews.genrep.probe",
    "extract_features": "ganviews.genrep.probe",
    "linear_probe": "ganviews.genrep.probe",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ganviews' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
