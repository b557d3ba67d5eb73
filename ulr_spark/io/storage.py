"""Files on any storage that Spark reaches, through fsspec: POSIX paths (a local disk, NFS, the
Databricks ``/dbfs/`` FUSE mount, Unity Catalog ``/Volumes/...``) and URLs (``file://``,
``s3://``, ``gs://``, ``abfss://``, ``hdfs://``, ``memory://``), given the fsspec package of
the scheme (``s3fs``, ``gcsfs``, ``adlfs``; docs/cluster.md).

Folders are written by a commit protocol, so a reader never reads a half-written one
(docs/decisions.md, "Artifacts on any storage"). A folder is complete only when its commit
marker (a small JSON file) exists, and the marker is always written last.

- **POSIX** (rename is atomic): the files and the marker are written into a fresh hidden
  sibling folder, which is then renamed into place (``os.replace``); an earlier folder of that
  name is moved aside first and put back if the rename fails.
- **Object stores** (a rename is a copy, file by file): the earlier folder is uncommitted
  (its marker deleted) and emptied, the files are written under the final prefix, inner
  markers after the files beside them, and the marker last. A single object is written by one
  request, so it appears whole or not at all.

``dbfs:/x`` (Databricks' own scheme, which fsspec reads only through the REST API of the
``databricks`` extra) is read as the FUSE path ``/dbfs/x``, which exists on Databricks nodes.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

DBFS_FUSE = "/dbfs"


def is_url(path: str) -> bool:
    return "://" in path or path.startswith("dbfs:")


def dbfs_fuse_path(url: str) -> str:
    """``dbfs:/a/b`` (or ``dbfs:///a/b``) as the FUSE path ``/dbfs/a/b``."""
    return posixpath.join(DBFS_FUSE, url[len("dbfs:"):].lstrip("/"))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it (plain paths: the local disk).

    Raises:
        ValueError: a ``dbfs:`` URL where there is no ``/dbfs`` mount (not a Databricks node).
    """
    url = os.fspath(url)
    if url.startswith("dbfs:"):
        if not os.path.isdir(DBFS_FUSE):
            raise ValueError(
                f"{url}: a dbfs: path is read through the {DBFS_FUSE} FUSE mount of a Databricks node, and this machine "
                f"has none; on Databricks use {dbfs_fuse_path(url)} or a Unity Catalog volume (/Volumes/...)"
            )
        url = dbfs_fuse_path(url)
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined with '/', as the caller wrote ``base`` (path or URL)."""
    if not is_url(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *parts])


def renames_atomically(fs: Any) -> bool:
    """Only the local disk (POSIX mounts included) is trusted to rename a folder atomically."""
    return isinstance(fs, LocalFileSystem)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    fs.invalidate_cache(path)  # an object store's listing cache would hide a run written since
    return bool(fs.exists(path))


def isdir(url: str) -> bool:
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return bool(fs.isdir(path))


def list_names(url: str) -> list[str]:
    """Names of the entries of folder ``url``, sorted ([] when it does not exist)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted({posixpath.basename(str(e).rstrip("/")) for e in entries} - {""})


def read_bytes(url: str) -> bytes:
    """Raises FileNotFoundError when there is no such file."""
    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def open_file(url: str, mode: str = "rb") -> IO:
    """A file object for ``torch.save``/``torch.load`` and the like (use it in ``with``)."""
    fs, path = filesystem(url)
    if "w" in mode:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return fs.open(path, mode)


def write_bytes(url: str, data: bytes) -> None:
    """One file, written by one request on object stores (so it is whole or absent)."""
    fs, path = filesystem(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def replace_file(url: str, data: bytes) -> None:
    """Write ``data`` under a temporary name beside ``url``, then move it onto ``url``: a reader
    (or a kill in the middle) finds the earlier file or the new one, never half of one."""
    fs, path = filesystem(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(temporary, data)
    fs.mv(temporary, path)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def remove_file(url: str) -> None:
    """Delete one file; nothing when it does not exist."""
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def remove_tree(url: str) -> None:
    """Delete a folder and everything under it; nothing when it does not exist."""
    fs, path = filesystem(url)
    if renames_atomically(fs):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def sibling(url: str, prefix: str) -> str:
    """A fresh hidden name beside ``url``: ``.<prefix>-<name>-<random>``."""
    parent, name = posixpath.split(url.rstrip("/")) if is_url(url) else os.path.split(url.rstrip("/"))
    return join(parent, f".{prefix}-{name}-{uuid.uuid4().hex[:8]}")


def _replace_folder(staging: str, final: str) -> None:
    """POSIX: rename ``staging`` to ``final``, replacing an earlier ``final`` (put back on failure)."""
    replaced = None
    if os.path.exists(final):
        replaced = posixpath.join(posixpath.dirname(final), f".replaced-{posixpath.basename(final)}-{uuid.uuid4().hex[:8]}")
        os.replace(final, replaced)
    try:
        os.replace(staging, final)
    except OSError:
        if replaced:  # put the earlier folder back rather than leave nothing under its name
            os.replace(replaced, final)
        raise
    if replaced:
        shutil.rmtree(replaced, ignore_errors=True)


def _uncommit(final: str, marker: str) -> None:
    """Object stores: from here on readers see no ``final``; then its files are removed."""
    remove_file(join(final, marker))
    remove_tree(final)


def write_folder(final: str, files: dict[str, Callable[[IO], None]], marker: str, marker_data: bytes) -> None:
    """Write folder ``final``: each of ``files`` (a name and a function that writes it to a
    file object), then ``marker`` with ``marker_data``, replacing an earlier folder whole."""
    fs, path = filesystem(final)
    if renames_atomically(fs):
        staging = sibling(path, "staging")
        os.makedirs(staging)
        target = staging
    else:
        _uncommit(final, marker)
        target = final
    try:
        for name, write in files.items():
            with open_file(join(target, name), "wb") as handle:
                write(handle)
        write_bytes(join(target, marker), marker_data)
        if renames_atomically(fs):
            _replace_folder(staging, path)
    finally:
        if renames_atomically(fs):
            shutil.rmtree(staging, ignore_errors=True)


def commit_folder(staging: str, final: str, marker: str, marker_data: bytes, inner_markers: Iterable[str] = ()) -> None:
    """Put the files written under ``staging`` in place as folder ``final`` and commit it with
    ``marker``, replacing an earlier ``final`` whole. On object stores the files are copied,
    those named in ``inner_markers`` (the markers of subfolders) after the rest, and
    ``staging`` is deleted once ``final`` is committed."""
    fs, path = filesystem(staging)
    final_fs, final_path = filesystem(final)
    if renames_atomically(fs) and renames_atomically(final_fs):
        write_bytes(join(staging, marker), marker_data)
        _replace_folder(path, final_path)
        return
    if type(fs) is not type(final_fs):
        raise ValueError(f"the staging folder {staging} and {final} must be on the same storage")
    fs.invalidate_cache(path)
    sources = sorted(fs.find(path))
    last = set(inner_markers)
    _uncommit(final, marker)
    for source in sorted(sources, key=lambda s: posixpath.basename(s) in last):  # stable: files, then markers
        target = posixpath.join(final_path, posixpath.relpath(source, path))
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.cp_file(source, target)
    write_bytes(join(final, marker), marker_data)
    remove_tree(staging)


def read_marker(folder: str, marker: str) -> Optional[Any]:
    """The JSON of ``folder``'s commit marker; None when the folder is not committed."""
    try:
        return read_json(join(folder, marker))
    except FileNotFoundError:
        return None
