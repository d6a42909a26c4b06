"""Storages: URLs and their checks, open/close, riding out outages, the artifact location rule, the
journal lock; the fast path of the RDB storage fenced in `_fast` (the only importer of Optuna's private
storage modules).
"""

from nasopt.storage._journal import LOCK_SUFFIX, NOTICE, RECORD_SUFFIX, JournalLock, journal_lock
from nasopt.storage._open import (
    DEFAULT_STORAGE,
    FAILURE_KEY,
    FAILURES_KEY,
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

__all__ = ['JournalLock', 'journal_lock', 'NOTICE', 'LOCK_SUFFIX', 'RECORD_SUFFIX', 'DEFAULT_STORAGE', 'open_storage', 'close_storage', 'fast_sqlite', 'mask_url', 'scrub', 'sqlite_path', 'journal_path', 'check_workers', 'set_user_attrs', 'storage_url', 'StorageUnavailable', 'retry_callback', 'retried', 'stamp_trials', 'sqlite_lock', 'on_close', 'FAILURE_KEY', 'FAILURES_KEY']
