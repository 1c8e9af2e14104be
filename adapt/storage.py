"""Every byte that touches local disk or object storage goes through this module.

A `Storage` is small and picklable, so the driver hands it to Ray workers, which rebuild the
filesystem lazily on first use. URIs are either local paths or `s3://bucket/key`; s3 goes through
s3fs with an optional endpoint (MinIO, moto, real S3) and the usual AWS credential chain, which is
never printed.

Writes are atomic for readers: a local file is written under a temporary name and renamed; an S3
object appears whole when its single PUT completes. Completion markers (manifests, commit records)
are written last, so a reader that sees one sees everything it names.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from adapt.config import StorageConfig


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with `/`, for local paths and s3:// alike."""
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def _aside(path: str) -> str:
    """A temporary name next to `path` that folder readers skip: pyarrow, pandas and DuckDB's
    `*.parquet` glob all pass over a hidden `.name.tmp-x` left by a killed write."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


def require_s3fs(uri: str) -> None:
    """Object storage needs s3fs, an extra: say how to install it rather than fail deep in fsspec."""
    import importlib.util

    if importlib.util.find_spec("s3fs") is None:
        raise ImportError(
            f"{uri}: s3:// storage needs s3fs; install it with pip install 'adapt[s3]'"
        )


@dataclass
class Storage:
    """Access to local paths and s3:// URIs with one set of options."""

    config: StorageConfig = field(default_factory=StorageConfig)
    _fs_cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.config = state["config"]
        self._fs_cache = {}

    def fs(self, uri: str) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem for a URI (s3fs for s3://, the local one otherwise)."""
        protocol = uri.split("://", 1)[0] if is_remote(uri) else "file"
        if protocol not in self._fs_cache:
            if protocol in ("s3", "s3a"):
                require_s3fs(uri)
                client_kwargs = {}
                endpoint = self.config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
                if endpoint:
                    client_kwargs["endpoint_url"] = endpoint
                if self.config.region:
                    client_kwargs["region_name"] = self.config.region
                attempts = self.config.max_attempts
                fs = fsspec.filesystem(
                    "s3",
                    anon=self.config.anon,
                    client_kwargs=client_kwargs,
                    config_kwargs={"retries": {"max_attempts": attempts, "mode": "adaptive"}},
                    skip_instance_cache=True,
                    use_listings_cache=False,
                )
                fs.retries = attempts  # s3fs's own retries of what botocore passes on
                self._fs_cache[protocol] = fs
            elif protocol == "file":
                self._fs_cache[protocol] = fsspec.filesystem("file")
            else:
                raise ValueError(
                    f"unsupported storage scheme {protocol}:// in {uri!r}; use a local path or s3://"
                )
        return self._fs_cache[protocol]

    def arrow_fs(self, uri: str) -> pa.fs.FileSystem:
        """A pyarrow filesystem over the same fsspec one, for pyarrow and Ray Data readers."""
        return pa.fs.PyFileSystem(pa.fs.FSSpecHandler(self.fs(uri)))

    @staticmethod
    def strip(uri: str) -> str:
        """The path the filesystem expects (no scheme)."""
        if uri.startswith("file://"):
            return uri[len("file://") :]
        return uri.split("://", 1)[1] if is_remote(uri) else os.path.abspath(uri)

    def qualify(self, uri: str, path: str) -> str:
        """Turn a path returned by a listing back into a URI with the scheme of `uri`."""
        if is_remote(uri):
            return f"{uri.split('://', 1)[0]}://{path}"
        return path

    # -- queries -------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return self.fs(uri).exists(self.strip(uri))

    def isdir(self, uri: str) -> bool:
        return self.fs(uri).isdir(self.strip(uri))

    def list_files(
        self, uri: str, suffixes: tuple[str, ...] = (), recursive: bool = True
    ) -> list[str]:
        """Sorted URIs of files under `uri`, skipping hidden names (`.x`, `_x`) as pyarrow does."""
        return sorted(self.file_infos(uri, suffixes, recursive))

    def file_infos(
        self, uri: str, suffixes: tuple[str, ...] = (), recursive: bool = True
    ) -> dict[str, dict[str, Any]]:
        """URI -> the backend's description (size, mtime or ETag, ...) of every file under `uri`,
        from one listing (recursive or not), skipping hidden names (`.x`, `_x`) as pyarrow does.
        A `uri` that is a file gives that file alone."""
        fs, root = self.fs(uri), self.strip(uri)
        if not fs.exists(root):
            return {}
        if fs.isfile(root):
            return {uri: fs.info(root)}
        base = root.rstrip("/")
        listing = (
            fs.find(root, detail=True)
            if recursive
            else {i["name"]: i for i in fs.ls(root, detail=True)}
        )
        out = {}
        for path, info in listing.items():
            rel = path[len(base) + 1 :] if path.startswith(base) else path
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                continue
            if info.get("type") == "file" and (not suffixes or path.endswith(suffixes)):
                out[self.qualify(uri, path)] = info
        return out

    def file_sizes(self, uri: str, suffixes: tuple[str, ...] = ()) -> dict[str, int]:
        """URI -> bytes of every file under `uri`, from one recursive listing (`file_infos`)."""
        return {k: int(v["size"]) for k, v in self.file_infos(uri, suffixes).items()}

    def size(self, uri: str) -> int:
        return int(self.fs(uri).size(self.strip(uri)))

    def info(self, uri: str) -> dict[str, Any]:
        """The backend's description of one object (size, mtime or ETag, ...)."""
        return self.fs(uri).info(self.strip(uri))

    # -- reads ---------------------------------------------------------------------------------
    def read_bytes(self, uri: str, limit: int | None = None) -> bytes:
        """The object's bytes; with `limit`, at most that many (a caller that asks for one more
        than it accepts learns that the object is too large without reading all of it)."""
        with self.fs(uri).open(self.strip(uri), "rb") as f:
            return f.read() if limit is None else f.read(limit)

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def read_json_or_none(self, uri: str) -> Any:
        try:
            return self.read_json(uri)
        except FileNotFoundError:
            return None

    def read_parquet(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.strip(uri), filesystem=self.arrow_fs(uri), columns=columns)

    def open(self, uri: str, mode: str = "rb"):
        """A file object for streaming reads (a tar, a large manifest); close it, or use `with`."""
        return self.fs(uri).open(self.strip(uri), mode)

    def parquet_file(self, uri: str) -> pq.ParquetFile:
        """A Parquet file opened for its metadata or for reading it batch by batch."""
        return pq.ParquetFile(self.open(uri))

    def read_schema(self, uri: str) -> pa.Schema:
        """The Arrow schema of a Parquet file, from its footer: no data pages are read."""
        return pq.read_schema(self.strip(uri), filesystem=self.arrow_fs(uri))

    def parquet_source(self, uris: list[str]) -> tuple[list[str], pa.fs.FileSystem | None]:
        """(paths, filesystem) for a reader that takes both, such as `ray.data.read_parquet`.

        Local paths go to Arrow's own filesystem (None); s3:// ones through this Storage's, with
        the same endpoint and options. All URIs must be on one backend.
        """
        if len({is_remote(u) for u in uris}) > 1:
            raise ValueError(f"files on local disk and on object storage in one read: {uris[:3]}")
        fs = self.arrow_fs(uris[0]) if uris and is_remote(uris[0]) else None
        return [self.strip(u) for u in uris], fs

    # -- writes --------------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object so that readers see the old state or the new, never a part."""
        fs, path = self.fs(uri), self.strip(uri)
        if is_remote(uri):
            fs.pipe_file(path, data)  # one PUT: the object appears whole
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = _aside(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def create_exclusive(self, uri: str, data: bytes) -> None:
        """Create an object only if none exists; raise FileExistsError otherwise.

        S3 does this with a conditional PUT (If-None-Match: *), local disk with link(2): either way
        exactly one of several concurrent creators wins.
        """
        fs, path = self.fs(uri), self.strip(uri)
        if is_remote(uri):
            fs.pipe_file(path, data, IfNoneMatch="*")
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Write aside, then hard-link into place: the link fails if the name exists, and a reader
        # never sees the file before its bytes are all there.
        tmp = _aside(path)
        with open(tmp, "wb") as f:
            f.write(data)
            # On disk before the name appears: a crash must not leave a lease or champion
            # pointer that exists but is empty or truncated.
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(
            uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
        )

    def write_parquet(self, uri: str, table: pa.Table, row_group_size: int = 16384) -> int:
        """Write a table as one Parquet file (zstd); return its size in bytes."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
        data = buf.getvalue()
        self.write_bytes(uri, data)
        return len(data)

    def delete(self, uri: str, recursive: bool = False) -> None:
        """Remove a file (or a folder, with `recursive`) if it is there. Idempotent: what another
        process or a retried task removed first is not an error."""
        fs, path = self.fs(uri), self.strip(uri)
        for _ in range(3):  # a folder whose files vanish under a recursive removal: go again
            try:
                if fs.exists(path):
                    fs.rm(path, recursive=recursive)
                return
            except FileNotFoundError:
                continue

    def copy(self, src: str, dst: str) -> None:
        self.write_bytes(dst, self.read_bytes(src))

    def check_writable(self, uri: str) -> None:
        """Fail early, with the fix, when the output root cannot be written."""
        probe = join(uri, f"_write_probe-{uuid.uuid4().hex[:8]}")
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except Exception as e:  # the cause differs by backend; the message is what matters
            raise PermissionError(
                f"cannot write under {uri!r} ({type(e).__name__}: {e}); check the path or bucket "
                "exists, the credentials allow PutObject/DeleteObject there, and storage.endpoint_url"
            ) from e
