"""The validation layer between a corpus reader and the pipeline: every row comes out, each bad
one quarantined with a reason from one closed set.

A reader hands over plain dict rows, text decoded with `surrogateescape` so that invalid UTF-8
survives to be named here instead of failing the read. `Validator` checks each row once: its id,
the type of every column, the encoding of its text, the size of an inline image, the kind of its
labels (one label or a list, as the shard's first labelled row has them), duplicate ids within
the shard; `attach_images` reads `image_path` files under the corpus root only, and never more
than `max_image_bytes` of one. A bad row keeps a stand-in id and goes to `rejects/`; the job
itself fails only for what no row could cause (the store, the config).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

from adapt import schema
from adapt.labels import label_value
from adapt.storage import Storage, is_remote, join

ERROR = "_error"  # carried through the pipeline: `code: detail` when the row is rejected

# The reject reasons: the `reason` column of rejects/ holds one of these, `detail` says more.
REASONS: dict[str, str] = {
    "missing_id": "the row has no id (a stand-in `<shard>#<row>` names it in rejects/)",
    "duplicate_id": "an earlier row of the corpus has the same id; the first one is kept",
    "bad_row": "the row does not parse: a CSV line with more fields than its header, a JSON "
    "line that is not an object, an unreadable WebDataset sidecar",
    "bad_type": "a value of the wrong type: text that is not a string, an image column holding "
    "text, a label that is neither a value nor a list of them, or a list where the shard's "
    "labels are single values (or the other way round)",
    "bad_encoding": "text (or an id, a label, a path) that is not valid UTF-8",
    "empty_text": "text that is empty or only whitespace",
    "missing_value": "a required modality is missing",
    "missing_file": "`image_path` names a file that is not there",
    "outside_corpus": "`image_path` points outside the corpus root and extract.image_roots",
    "too_large": "an image over extract.max_image_bytes, or over extract.max_image_pixels",
    "corrupt_image": "image bytes that do not decode",
    "non_finite": "the encoder gave NaN or infinity for the row",
}


def reject(code: str, detail: str = "") -> str:
    """The `_error` a reader or the embed step gives a bad row: `code: detail`."""
    if code not in REASONS:
        raise ValueError(f"unknown reject reason {code!r}; valid: {sorted(REASONS)}")
    return f"{code}: {detail}"[:300] if detail else code


def split_error(error: str) -> tuple[str, str | None]:
    """`code: detail` -> (code, detail)."""
    code, _, detail = error.partition(": ")
    return code, detail or None


def bad_utf8(text: str) -> bool:
    """True for text decoded with surrogateescape from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode(data: bytes) -> str:
    """Bytes -> str keeping invalid UTF-8 as lone surrogates, for `bad_utf8` to find per row."""
    return data.decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class Limits:
    """What a corpus row may ask of the reader (from extract config)."""

    corpus: str = ""
    max_image_bytes: int = 64 * 2**20
    image_roots: tuple[str, ...] = ()


def _normal(uri: str) -> str:
    """A URI with `.`/`..` resolved (and, on local disk, links): what is compared with a root."""
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.realpath(uri)


def _under(uri: str, root: str) -> bool:
    root = _normal(root).rstrip("/")
    return uri == root or uri.startswith(root + "/")


def resolve_image_path(path: str, base: str, limits: Limits) -> str | None:
    """The URI an `image_path` names (relative ones from `base`, the manifest's folder), or None
    when it falls outside the corpus root, `base` and `limits.image_roots`."""
    raw = path if is_remote(path) or path.startswith("/") else join(base, path)
    uri = _normal(raw)
    roots = [r for r in (limits.corpus, base, *limits.image_roots) if r]
    if "://" in uri and not uri.startswith(("s3://", "s3a://")):
        return None  # http://, file:// ...: never fetched on the corpus's behalf
    return uri if any(_under(uri, r) for r in roots) else None


def attach_images(store: Storage, rows: list[dict], base: str, limits: Limits) -> None:
    """Load `image_path` files into `image` bytes; a row's fault becomes its `_error`.

    Only what the row names is its fault: a file that is not there, a path outside the corpus,
    a file over the size limit. Any other error reading it (throttling, a 5xx, a reset
    connection, an expired token: s3fs raises them all as OSError) is the store's, retried by
    Storage and then raised: the shard does not commit, and a re-run reads the row again,
    where a reject would have lost it for good.
    """
    for r in rows:
        path = r.pop(schema.IMAGE_PATH, None)
        if r.get(ERROR) or r.get(schema.IMAGE) is not None or path in (None, ""):
            continue
        if not isinstance(path, str):
            r[ERROR] = reject("bad_type", f"image_path is {type(path).__name__}")
            continue
        if bad_utf8(path):
            r[ERROR] = reject("bad_encoding", "image_path")
            continue
        uri = resolve_image_path(path, base, limits)
        if uri is None:
            r[ERROR] = reject("outside_corpus", path)
            continue
        try:
            data = store.read_bytes(uri, limit=limits.max_image_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            r[ERROR] = reject("missing_file", path)
            continue
        except OSError as e:
            raise OSError(
                f"reading image {uri} of row {r.get(schema.ID)!r} failed ({e}); the shard is "
                "not committed and a re-run reads it again. Check the store and its "
                "credentials, or raise storage.max_attempts"
            ) from e
        if len(data) > limits.max_image_bytes:
            r[ERROR] = reject("too_large", f"{path} is over {limits.max_image_bytes} bytes")
        else:
            r[schema.IMAGE] = data


@dataclass
class Validator:
    """Checks the rows of one shard, batch after batch, in order (it remembers ids and label
    kinds across batches)."""

    shard_key: str
    limits: Limits = field(default_factory=Limits)
    _ids: set[str] = field(default_factory=set)
    _multi: dict[str, bool] = field(default_factory=dict)  # label column -> lists or values
    _row: int = 0

    def check(self, rows: list[dict]) -> list[dict]:
        out = []
        for r in rows:
            index, self._row = self._row, self._row + 1
            row, error = self._check_row(r)
            if row.get(schema.ID) in (None, ""):
                row[schema.ID] = f"{self.shard_key}#{index}"
                error = error or reject("missing_id")
            if error and not row.get(ERROR):
                row[ERROR] = error
            out.append(row)
        return out

    def _check_row(self, r: dict) -> tuple[dict, str | None]:
        if None in r:  # csv.DictReader puts the fields past the header under None
            extra = r.pop(None)
            row = {k: v for k, v in r.items() if isinstance(k, str)}
            return _ids_only(row), reject("bad_row", f"{len(extra)} field(s) more than the header")
        if r.get(ERROR):
            return _ids_only(r), None
        error = None
        rid = r.get(schema.ID)
        if isinstance(rid, bytes):
            rid = decode(rid)
        if isinstance(rid, bool) or not isinstance(rid, str | int | float | type(None)):
            return {}, reject("bad_type", f"id is {type(rid).__name__}")
        rid = None if rid is None or rid == "" else (rid if isinstance(rid, str) else str(rid))
        if rid is not None and bad_utf8(rid):
            return {}, reject("bad_encoding", "id")
        r[schema.ID] = rid
        if rid is not None:
            if rid in self._ids:
                return _ids_only(r), reject("duplicate_id", rid)
            self._ids.add(rid)
        text = r.get(schema.TEXT)
        if text is not None and not isinstance(text, str):
            error = reject("bad_type", f"text is {type(text).__name__}, not a string")
        elif text is not None and bad_utf8(text):
            error = reject("bad_encoding", "text")
        image = r.get(schema.IMAGE)
        if error is None and image is not None:
            if isinstance(image, str):
                error = reject(
                    "bad_type", "the image column holds text; a path belongs in image_path"
                )
            elif not isinstance(image, bytes | bytearray | memoryview):
                error = reject("bad_type", f"image is {type(image).__name__}, not bytes")
            elif len(image) > self.limits.max_image_bytes:
                error = reject("too_large", f"image over {self.limits.max_image_bytes} bytes")
        split = r.get(schema.SPLIT)
        if error is None and split is not None:
            if not isinstance(split, str):
                r[schema.SPLIT] = split = str(split)
            if bad_utf8(split):
                error = reject("bad_encoding", "split")
        for k in [k for k in r if k.startswith(schema.LABEL)]:
            if error is not None:
                break
            error = self._check_label(r, k)
        return (_ids_only(r), error) if error else (r, None)

    def _check_label(self, r: dict, column: str) -> str | None:
        value = r[column]
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, dict | bytes | set):
            return reject("bad_type", f"{column} is {type(value).__name__}")
        if isinstance(value, list) and any(isinstance(v, list | dict | tuple) for v in value):
            return reject("bad_type", f"{column} holds nested lists")
        value = label_value(value)
        texts = value if isinstance(value, list) else [value]
        if any(t is not None and bad_utf8(t) for t in texts):
            return reject("bad_encoding", column)
        if value is not None:
            multi = isinstance(value, list)
            kind = self._multi.setdefault(column, multi)
            if kind != multi:
                return reject(
                    "bad_type",
                    f"{column} is {'a list' if multi else 'one value'} where this shard's "
                    f"labels are {'lists' if kind else 'single values'}",
                )
        r[column] = value
        return None

    def label_kinds(self) -> dict[str, bool]:
        """Label column -> True for lists of labels, as the shard's rows so far have them."""
        return dict(self._multi)


def _ids_only(r: dict) -> dict:
    """What a rejected row keeps: its id (when it is a usable one), split and error."""
    rid = r.get(schema.ID)
    keep = {schema.ID: rid if isinstance(rid, str) and not bad_utf8(rid) else None}
    if r.get(ERROR):
        keep[ERROR] = r[ERROR]
    return keep
