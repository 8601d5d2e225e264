"""The metadata store's old import path: everything lives in `trempy_nb.store` now.

Kept so that `from trempy_nb.metadata import MetadataStore` (the engine, reports, notebooks,
user code) keeps working; new code imports `trempy_nb.store`.
"""

from trempy_nb.store import (
    COUNTERS,
    SCHEMA_VERSION,
    TARGET_FIELDS,
    Lease,
    MetadataStore,
    RunKind,
    RunStatus,
)
from trempy_nb.store.facade import mask_value as _mask_value  # noqa: F401 - the old private name

__all__ = ["COUNTERS", "SCHEMA_VERSION", "TARGET_FIELDS", "Lease", "MetadataStore", "RunKind", "RunStatus"]
