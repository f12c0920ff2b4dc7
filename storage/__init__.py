"""The catalog: every artefact's layout, schema, chunking and dtype, declared in one place.

No torch here. The latent store (Zarr v3), the logit tables and the manifest (Parquet),
and the queries over them. See docs/storage.md.
"""

from storage.errors import StoreError
from storage.latents import DONE, FAILED, PENDING, LatentStore
from storage.logits import LOGITS_SCHEMA, PARTITION_COLUMNS, read_logits, write_logits
from storage.manifest import manifest_sha256, read_manifest, write_manifest

__all__ = [
    "DONE",
    "FAILED",
    "LOGITS_SCHEMA",
    "PARTITION_COLUMNS",
    "PENDING",
    "LatentStore",
    "StoreError",
    "manifest_sha256",
    "read_logits",
    "read_manifest",
    "write_logits",
    "write_manifest",
]
