"""Storages: URLs and their checks (`_urls`), the schema and the creation locks (`_schema`), opening and
closing (`_open`), riding out outages (`_outage`), the retry rule and the worker record of new trials
(`_retry`), the journal lock (`_journal`); the fast path of the RDB storage fenced in `_fast` (the only
importer of Optuna's private storage modules). Each name is imported here from the module that defines it.
"""

from nasopt.storage._journal import LOCK_SUFFIX, NOTICE, RECORD_SUFFIX, JournalLock, journal_lock
from nasopt.storage._open import close_storage, fast_sqlite, on_close, open_storage, set_user_attrs
from nasopt.storage._outage import GRACE_PERIOD, HEARTBEAT_INTERVAL, OUTAGE_TIMEOUT, StorageUnavailable
from nasopt.storage._retry import MAX_RETRY, retried, retry_callback, stamp_trials
from nasopt.storage._schema import sqlite_lock
from nasopt.storage._urls import (
    DEFAULT_STORAGE,
    check_workers,
    journal_path,
    mask_url,
    scrub,
    sqlite_path,
    storage_url,
)

__all__ = ["open_storage", "close_storage", "fast_sqlite", "set_user_attrs", "sqlite_lock", "on_close",
           "DEFAULT_STORAGE", "mask_url", "scrub", "sqlite_path", "journal_path", "check_workers", "storage_url",
           "StorageUnavailable", "retry_callback", "retried", "stamp_trials", "MAX_RETRY", "GRACE_PERIOD",
           "HEARTBEAT_INTERVAL", "OUTAGE_TIMEOUT", "JournalLock", "journal_lock", "NOTICE", "LOCK_SUFFIX",
           "RECORD_SUFFIX"]
