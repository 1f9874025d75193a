"""File API bodies: list-directory, resolve-path, read-file-lines, edit-files, bundle-files (§3)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from agentconn.proto._codec import Model, Omit, key

__all__ = [
    "BundleFilesRequest",
    "BundleLimits",
    "BundleManifest",
    "BundleManifestError",
    "BundleManifestFile",
    "FileEdit",
    "FileEditRequest",
    "FileEditResponse",
    "FileEditResult",
    "FileEdits",
    "LSFile",
    "LSRequest",
    "LSResponse",
    "ReadFileLinesResponse",
    "Relativity",
    "ResolvePathResponse",
]


class Relativity(str, enum.Enum):
    """``LSRequest.relativity``: join ``path`` under the home directory or under ``/``."""

    HOME = "home"
    ROOT = "root"


@dataclass(frozen=True, slots=True, kw_only=True)
class LSRequest(Model):
    """``POST /api/v0/list-directory`` body. ``relativity`` is an open enum (see :class:`Relativity`):
    an unknown value is kept so the agent can answer ``unsupported relativity type "<r>"``."""

    path: list[str] = key("path", default_factory=list)
    relativity: str = key("relativity", default="", enum=Relativity)


@dataclass(frozen=True, slots=True, kw_only=True)
class LSFile(Model):
    """One directory entry of :class:`LSResponse`."""

    name: str = key("name")
    absolute_path_string: str = key("absolute_path_string")
    is_dir: bool = key("is_dir")


@dataclass(frozen=True, slots=True, kw_only=True)
class LSResponse(Model):
    """list-directory 200 body; ``contents`` is ``[]``, never ``null``."""

    absolute_path: list[str] = key("absolute_path")
    absolute_path_string: str = key("absolute_path_string")
    contents: list[LSFile] = key("contents")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvePathResponse(Model):
    """``GET /api/v0/resolve-path`` 200 body."""

    resolved_path: str = key("resolved_path")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadFileLinesResponse(Model):
    """``GET /api/v0/read-file-lines`` body (always 200): zero values omitted except ``success``."""

    success: bool = key("success")
    file_size: int = key("file_size", omit=Omit.EMPTY, default=0)
    total_lines: int = key("total_lines", omit=Omit.EMPTY, default=0)
    lines_read: int = key("lines_read", omit=Omit.EMPTY, default=0)
    content: str = key("content", omit=Omit.EMPTY, default="")
    error: str = key("error", omit=Omit.EMPTY, default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEdit(Model):
    """One edit. The reference client sends ``old_text``/``new_text`` and the legacy
    ``search``/``replace`` with the same values; ``replace_all`` only when true.
    Use :meth:`for_client` to build that shape and :meth:`effective` to read it as an agent."""

    old_text: str = key("old_text", default="")
    new_text: str = key("new_text", default="")
    search: str = key("search", default="")
    replace: str = key("replace", default="")
    replace_all: bool = key("replace_all", omit=Omit.EMPTY, default=False)

    @classmethod
    def for_client(cls, old_text: str, new_text: str, *, replace_all: bool = False) -> FileEdit:
        """The edit as the reference client sends it (both key pairs, same values)."""
        return cls(
            old_text=old_text,
            new_text=new_text,
            search=old_text,
            replace=new_text,
            replace_all=replace_all,
        )

    def effective(self) -> tuple[str, str]:
        """``(search, replace)`` the agent applies: the new keys unless both are empty."""
        if self.old_text or self.new_text:
            return self.old_text, self.new_text
        return self.search, self.replace


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEdits(Model):
    """One file of :class:`FileEditRequest`: ``{"path", "edits"}``."""

    path: str = key("path", default="")
    edits: list[FileEdit] = key("edits", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEditRequest(Model):
    """``POST /api/v0/edit-files`` body; ``include_diff`` omitted when false."""

    files: list[FileEdits] = key("files", default_factory=list)
    include_diff: bool = key("include_diff", omit=Omit.EMPTY, default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEditResult(Model):
    """Per-file diff of :class:`FileEditResponse` (``diff`` is ``""`` for a no-op edit)."""

    path: str = key("path")
    diff: str = key("diff")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEditResponse(Model):
    """edit-files 200 body: ``{}`` without ``include_diff``, else ``{"files": [...]}``."""

    files: list[FileEditResult] = key("files", omit=Omit.EMPTY, default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleFilesRequest(Model):
    """``POST /api/v0/bundle-files`` body (≤ 64 KiB)."""

    paths: list[str] = key("paths", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleManifestFile(Model):
    """A collected file in the bundle's ``manifest.json``."""

    requested: str = key("requested")
    path: str = key("path")
    archive_path: str = key("archive_path")
    size: int = key("size")
    mod_time: datetime = key("mod_time")
    bytes_written: int = key("bytes_written")
    truncated: bool = key("truncated")


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleManifestError(Model):
    """A per-path problem in the bundle's ``manifest.json`` (e.g. ``no matches``). ``path`` is
    ``omitempty`` in Go (``BundleFilesManifestError``): absent when the request matched no
    path."""

    requested: str = key("requested")
    path: str = key("path", omit=Omit.EMPTY, default="")
    reason: str = key("reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleLimits(Model):
    """The limits recorded in the bundle's ``manifest.json``."""

    max_files: int = key("max_files", default=10000)
    max_bytes_per_file: int = key("max_bytes_per_file", default=10 * 1024 * 1024)
    max_total_bytes: int = key("max_total_bytes", default=100 * 1024 * 1024)


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleManifest(Model):
    """``manifest.json``, the last member of the bundle-files tar stream."""

    requested: list[str] = key("requested", default_factory=list)
    files: list[BundleManifestFile] = key("files", default_factory=list)
    errors: list[BundleManifestError] = key("errors", default_factory=list)
    truncated: bool = key("truncated", default=False)
    limits: BundleLimits = key("limits", default_factory=BundleLimits)
