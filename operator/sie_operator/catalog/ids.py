"""Model id rules shared by the HTTP layer, the store and the CRD.

The store encodes ``/`` as ``__`` in file names, so an id must map to exactly one file
name and back. SIE's own rule lets ``a__b`` (and ``x_/y``) through and then fails with a
500 or silently renames the model; we refuse such ids up front with a 400.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 253
# File names are limited to 255 bytes; the store writes ``<stem>.yaml`` via a temporary
# ``.<stem>.yaml.<random>.tmp``, so the encoded stem (``/`` -> ``__``) must leave room.
MAX_FILENAME_STEM = 200
_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._/-]*")


class InvalidModelId(ValueError):
    """The id cannot name a model; ``str(exc)`` is the user-facing message."""


def validate_model_id(model_id: object) -> str:
    """Return the id if it is acceptable, else raise InvalidModelId with the reason."""
    if not isinstance(model_id, str):
        raise InvalidModelId("Model ID must be a string.")
    if not model_id or len(model_id) > MAX_ID_LENGTH:
        raise InvalidModelId(f"Model ID must be 1 to {MAX_ID_LENGTH} characters long.")
    if ".." in model_id or "\\" in model_id or not _ID_RE.fullmatch(model_id):
        raise InvalidModelId("Model ID contains invalid characters.")
    if model_id == "status" or model_id.endswith("/status"):
        raise InvalidModelId(
            "Model ID must not end with '/status' (reserved for the gateway status endpoint)."
        )
    if "__" in model_id or "_/" in model_id or "/_" in model_id or model_id.endswith(("/", "_")):
        raise InvalidModelId(
            "Model ID must not contain '__', '_/', '/_' or end with '/' or '_': "
            "the store encodes '/' as '__' in file names and could not map it back."
        )
    if "//" in model_id:
        raise InvalidModelId("Model ID must not contain empty path segments ('//').")
    if len(id_to_filename(model_id)) > MAX_FILENAME_STEM:
        raise InvalidModelId(
            f"Model ID is too long: with each '/' stored as '__' it must fit in {MAX_FILENAME_STEM} "
            "characters (file name limit)."
        )
    return model_id


def id_to_filename(model_id: str) -> str:
    """Store file stem for an id (SIE layout: ``/`` becomes ``__``)."""
    return model_id.replace("/", "__")


def filename_to_id(stem: str) -> str:
    """Inverse of :func:`id_to_filename` for ids accepted by :func:`validate_model_id`."""
    return stem.replace("__", "/")
