"""Storage URLs: which file or server a URL names, and its password kept out of every message."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from optuna.storages import BaseStorage

from nasopt.errors import UserError

__all__ = ["DEFAULT_STORAGE", "mask_url", "scrub", "storage_url", "sqlite_path", "journal_path", "url_scheme",
           "check_workers", "folder_of"]

DEFAULT_STORAGE = "sqlite:///nasopt.db"


# -- URLs and secrets ------------------------------------------------------------------------------

def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe for messages and logs."""
    url = re.sub(r"(://[^:/@?#\s]*:)[^\s]*@", r"\1***@", url)  # user:PASSWORD@host (up to the last @)
    return re.sub(r"(?i)([?&](?:password|passwd)=)[^&\s]*", r"\1***", url)


def _password(url: str) -> str | None:
    match = re.match(r"[^:]+://[^:/@?#\s]*:([^\s]*)@", url)
    if match:
        return match.group(1)
    match = re.search(r"(?i)[?&](?:password|passwd)=([^&\s]*)", url)
    return match.group(1) if match else None


def scrub(text: str, url: str | None = None) -> str:
    """`text` with URL passwords masked, and the password of `url` (raw or decoded) removed anywhere."""
    text = mask_url(text)
    secret = _password(url) if url else None
    if secret:
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:  # shorter ones would garble the text; URLs are masked anyway
                text = text.replace(form, "***")
    return text


def storage_url(storage: str | BaseStorage | None) -> str | None:
    """The URL a storage was opened from (None when unknown)."""
    if storage is None or isinstance(storage, str):
        return storage
    storage = getattr(storage, "_backend", storage)
    return getattr(storage, "url", None)


def sqlite_path(url: str) -> Path | None:
    """The file of an `sqlite:///FILE` (or `sqlite+DRIVER:///FILE`) URL, without its `?query`; None for
    other schemes and for URLs that name no file (`sqlite://`, `sqlite:///`, `sqlite:///:memory:`)."""
    match = re.match(r"sqlite(?:\+\w+)?:///([^?]*)", url, re.IGNORECASE)
    if match is None:
        return None
    path = match.group(1)
    return None if path in ("", ":memory:") else Path(path)


def journal_path(url: str) -> Path | None:
    """The file of a `journal:///FILE` URL: relative like sqlite:///, absolute with four slashes."""
    if not url.startswith("journal:///"):
        return None
    path = url[len("journal:///"):]
    return Path(path) if path else None


def url_scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def check_workers(url: str | None, workers: int) -> None:
    """SQLite serves one process: several workers need a journal file or a database server."""
    if workers > 1 and url_scheme(url or DEFAULT_STORAGE) == "sqlite":
        raise UserError(f"storage {mask_url(url or DEFAULT_STORAGE)} is SQLite, which serves one process; with "
                        f"--workers {workers} use a journal file on this machine (--storage journal:///nasopt.log) "
                        "or PostgreSQL for several machines (--storage postgresql://USER@HOST/DB)")


def folder_of(path: Path) -> str:
    """The folder of `path` as a user should read it (absolute: "." says little in a message)."""
    return os.path.abspath(path.parent)
