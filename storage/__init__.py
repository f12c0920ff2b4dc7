"""The catalog: every artefact's layout, schema, chunking and dtype, declared in one place.

No torch here. The latent store (Zarr v3), the logit tables and the manifest (Parquet),
and the queries over them.
"""

from storage.errors import StoreError

__all__ = ["StoreError"]
