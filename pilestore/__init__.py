"""pilestore: Pile-format corpora as a compressed, random-access store that trainers read directly.

import pilestore
store = pilestore.open("pile.store")
store[12345].text
"""

__version__ = "0.1.0"

from .document import Document  # noqa: E402
from .errors import (  # noqa: E402
    CorruptDocumentError,
    IncompleteStoreError,
    PilestoreError,
    SourceError,
    StoreFormatError,
    StoreLockedError,
    StoreNotFoundError,
)
from .store import Store, open  # noqa: E402

__all__ = [
    "CorruptDocumentError",
    "Document",
    "IncompleteStoreError",
    "PilestoreError",
    "SourceError",
    "Store",
    "StoreFormatError",
    "StoreLockedError",
    "StoreNotFoundError",
    "__version__",
    "open",
]
