"""Storages: URLs and their checks (`_urls`), the schema and the creation locks (`_schema`), opening and
closing (`_open`), riding out outages (`_outage`), the retry rule and the worker record of new trials
(`_retry`), the journal lock (`_journal`); the fast path of the RDB storage fenced in `_fast` (the only
importer of Optuna's private storage modules).
"""

from nasopt.storage._journal import LOCK_SUFFIX, NOTICE, RECORD_SUFFIX, JournalLock, journal_lock
from nasopt.storage._open import (
    DEFAULT_STORAGE,
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    MAX_RETRY,
    OUTAGE_TIMEOUT,
    StorageUnavailable,
    check_workers,
    close_storage,
    fast_sqlite,
    journal_path,
    mask_url,
    on_close,
    open_storage,
    retried,
    retry_callback,
    scrub,
    set_user_attrs,
    sqlite_lock,
    sqlite_path,
    stamp_trials,
    storage_url,
)

__all__ = ["open_storage", "close_storage", "fast_sqlite", "set_user_attrs", "sqlite_lock", "on_close",
           "DEFAULT_STORAGE", "mask_url", "scrub", "sqlite_path", "journal_path", "check_workers", "storage_url",
           "StorageUnavailable", "retry_callback", "retried", "stamp_trials", "MAX_RETRY", "GRACE_PERIOD",
           "HEARTBEAT_INTERVAL", "OUTAGE_TIMEOUT", "JournalLock", "journal_lock", "NOTICE", "LOCK_SUFFIX",
           "RECORD_SUFFIX"]
