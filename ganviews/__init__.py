"""ganviews: test-time ensembling with deep generative views (Chai et al., CVPR 2021).

The library is pure PyTorch + numpy. It knows nothing of Prefect, Zarr or Parquet: the
`storage` package owns all artefacts, `tasks`/`flows` wire the two together.
"""

__version__ = "0.1.0"
