"""Errors of the storage engine, each with a documented process exit code.

Every error carries a message that names the thing and the fix, so the
command line can print it as one line without a traceback.
"""

from __future__ import annotations


class NerdError(Exception):
    """Base of every error a user can act on."""

    exit_code = 1


class UsageError(NerdError):
    """Bad input from the user: a name, a path, an option."""

    exit_code = 2


class ConfigError(NerdError):
    """A malformed or inconsistent config/session file or store config."""

    exit_code = 3


class NotFound(NerdError):
    """A dataset, snapshot or source path that does not exist."""

    exit_code = 4


class ObjectNotFound(NotFound):
    """An object key that is missing from the store."""

    def __init__(self, key: str, store: str = "") -> None:
        self.key = key
        super().__init__(f"store {store}: object {key} is missing" if store else f"object {key} is missing")


class Conflict(NerdError):
    """A compare-and-swap that lost: someone else changed the ref first."""

    exit_code = 5


class RefConflict(Conflict):
    """Raised by stores when a conditional ref write fails."""


class StoreError(NerdError):
    """The store refused or failed an operation (permanent: retrying won't help)."""

    exit_code = 6


class TransientStoreError(StoreError):
    """A store failure worth retrying: timeouts, throttling, 5xx, connection resets."""


class IntegrityError(NerdError):
    """Stored bytes that do not match their id, or an object that cannot be decoded."""

    exit_code = 7


class UnsafeEntry(IntegrityError):
    """A tree entry whose name would escape the target directory."""


class AuthError(NerdError):
    """Not logged in, a login that expired or was refused, or a token that does not verify."""

    exit_code = 8


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with --debug output)",
    2: "usage error: bad arguments, names or paths",
    3: "configuration error: config.json, session.json or store config",
    4: "not found: dataset, snapshot or source path",
    5: "conflict: a concurrent change to the same dataset",
    6: "store error: unreachable, access denied, no such bucket",
    7: "integrity error: corrupted or unsafe data in the store",
    8: "authentication error: not logged in, login expired or denied, token invalid",
    130: "interrupted (Ctrl-C)",
}
