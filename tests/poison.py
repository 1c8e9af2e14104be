"""Poison corpora: every kind of bad row a user's corpus can hold, in each input format, with the
reject reason each must get. `build(root)` writes them on local disk and returns, per corpus,
its folder and {id: reason} of its bad rows (ids of rows with no id are the stand-ins)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.corpus_fixtures import png


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    data = bytearray(png(0))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _good(prefix: str, n: int) -> list[dict]:
    return [
        {"id": f"{prefix}{i:04d}", "text": f"row {i} the cat", "label": f"c{i % 2}"}
        for i in range(n)
    ]


def folder(root: Path) -> dict[str, str]:
    """A manifest corpus (JSONL and CSV): 300 good rows first, so labels of one kind fill more
    than a read batch before the mixed ones come."""
    (root / "img").mkdir(parents=True)
    (root / "img" / "ok.png").write_bytes(png(1))
    (root / "img" / "bomb.png").write_bytes(bomb_png())
    (root.parent / "secret.png").write_bytes(png(2))
    lines = [json.dumps(r) for r in _good("g", 300)]
    bad = {
        "p-int": ({"id": "p-int", "text": 5, "label": "c0"}, "bad_type"),
        "p-http": ({"id": "p-http", "image_path": "http://127.0.0.1:9/x.png"}, "outside_corpus"),
        "p-abs": ({"id": "p-abs", "image_path": "/etc/hostname"}, "outside_corpus"),
        "p-up": ({"id": "p-up", "image_path": "../secret.png"}, "outside_corpus"),
        "p-zero": ({"id": "p-zero", "image_path": "/dev/zero"}, "outside_corpus"),
        "p-bomb": ({"id": "p-bomb", "image_path": "img/bomb.png"}, "too_large"),
        "p-nofile": ({"id": "p-nofile", "image_path": "img/absent.png"}, "missing_file"),
        "p-list": ({"id": "p-list", "text": "x", "label": ["c0", "c1"]}, "bad_type"),
        "p-dict": ({"id": "p-dict", "text": "x", "label": {"a": 1}}, "bad_type"),
        "p-empty": ({"id": "p-empty", "text": "   ", "label": "c0"}, "empty_text"),
    }
    lines += [json.dumps(r) for r, _ in bad.values()]
    lines.append(
        json.dumps({"id": "p-img", "image_path": "img/ok.png", "text": "ok", "label": "c1"})
    )
    lines.append(json.dumps({"text": "a row without an id", "label": "c0"}))
    lines.append("this line is not json")
    lines.append(json.dumps({"id": "g0001", "text": "the same id again", "label": "c0"}))
    raw = ("\n".join(lines) + "\n").encode()
    raw += b'{"id": "p-utf8", "text": "caf\xe9 latin-1", "label": "c0"}\n'
    (root / "manifest.jsonl").write_bytes(raw)
    n = len(lines)  # the rows after the good ones, by position in the file
    reasons = {k: reason for k, (_, reason) in bad.items()}
    reasons.update(
        {
            "manifest-000000000#311": "missing_id",
            "manifest-000000000#312": "bad_row",
            "g0001": "duplicate_id",
            "p-utf8": "bad_encoding",
        }
    )
    assert n == 314
    (root / "extra.csv").write_text(
        "id,text,label\nq-ok,a good csv row,c0\nq-extra,one field,c1,too many\n"
    )
    reasons["q-extra"] = "bad_row"
    return reasons


def _string_view(values: list[bytes]) -> pa.Array:
    """A string array holding exactly these bytes, valid UTF-8 or not (no validation)."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(
        pa.string(),
        len(values),
        [
            None,
            pa.py_buffer(struct.pack(f"<{len(offsets)}i", *offsets)),
            pa.py_buffer(b"".join(values)),
        ],
    )


def parquet(root: Path) -> dict[str, str]:
    """Parquet shards: invalid UTF-8 in a string column, an image column of strings, and ids
    that repeat across shards."""
    root.mkdir(parents=True)
    good = _good("a", 20)
    texts = [r["text"].encode() for r in good]
    texts[3] = b"\xff\xfe not utf-8"
    table = pa.table(
        {
            "id": [r["id"] for r in good],
            "text": _string_view(texts),
            "label": [r["label"] for r in good],
        }
    )
    pq.write_table(table, root / "a.parquet")
    pq.write_table(
        pa.table({"id": ["b0", "b1"], "text": ["x", "y"], "image": ["img/b0.png", "img/b1.png"]}),
        root / "b.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "id": ["a0005", "c0", "c1"],
                "text": ["again", "c zero", "c one"],
                "label": ["c0", "c1", "c0"],
            }
        ),
        root / "c.parquet",
    )
    return {"a0003": "bad_encoding", "b0": "bad_type", "b1": "bad_type", "a0005": "duplicate_id"}


def webdataset(root: Path) -> dict[str, str]:
    """A tar whose members share base names in two folders, a bad sidecar and bad text."""
    root.mkdir(parents=True)
    buf = io.BytesIO()
    members = [
        ("train/0001.txt", b"the train cat"),
        ("val/0001.txt", b"the val cat"),
        ("train/0002.txt", b"a dog"),
        ("train/0002.json", b"{not json"),
        ("train/0003.txt", b"\xff\xfe"),
        ("train/0004.txt", b"fine"),
        ("train/0004.png", bomb_png()),
    ]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "s.tar").write_bytes(buf.getvalue())
    return {"train/0002": "bad_row", "train/0003": "bad_encoding", "train/0004": "too_large"}


CORPORA = {"folder": folder, "parquet": parquet, "webdataset": webdataset}
GOOD_ROWS = {"folder": 302, "parquet": 19 + 2, "webdataset": 2}  # embedded rows of each
