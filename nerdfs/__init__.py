"""nerdfs: the deduplicating storage engine (and, later, the FUSE filesystem).

The public surface is small: open a :class:`Repository` on a store URL, then
use :class:`Datasets` for refs and snapshots, :class:`Archiver` to store a
directory and :class:`Restorer` to bring one back.
"""

from .archiver import Archiver, ArchiveStats
from .chunker import Chunker, ChunkerParams
from .datasets import CommitConflict, Datasets, Head, check_dataset_name
from .errors import (Conflict, ConfigError, IntegrityError, NerdError, NotFound, StoreError,
                     TransientStoreError, UsageError)
from .objects import Snapshot, Tree
from .progress import Progress, ProgressCallback
from .repo import Repository
from .restorer import Restorer, RestoreStats
from .store import S3Options

__version__ = "0.1.0"

__all__ = [
    "Archiver", "ArchiveStats", "Chunker", "ChunkerParams", "CommitConflict", "Datasets", "Head",
    "check_dataset_name", "Conflict", "ConfigError", "IntegrityError", "NerdError", "NotFound", "StoreError",
    "TransientStoreError", "UsageError", "Snapshot", "Tree", "Progress", "ProgressCallback", "Repository",
    "Restorer", "RestoreStats", "S3Options", "__version__",
]
