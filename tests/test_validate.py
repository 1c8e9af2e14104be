"""The validation layer at the reader: one closed set of reasons, each bad row quarantined."""

from __future__ import annotations

import pytest

from adapt.extract import readers
from adapt.extract.core import TooLarge, decode_image, embed_batch
from adapt.extract.validate import (
    ERROR,
    REASONS,
    Limits,
    Validator,
    attach_images,
    reject,
    resolve_image_path,
    split_error,
)
from adapt.storage import Storage
from tests.corpus_fixtures import png
from tests.poison import bomb_png


def _errors(rows):
    return [split_error(r[ERROR])[0] if r.get(ERROR) else None for r in rows]


def test_reasons_are_a_closed_set():
    assert reject("too_large", "x") == "too_large: x" and split_error("too_large: x") == (
        "too_large",
        "x",
    )
    with pytest.raises(ValueError, match="unknown reject reason"):
        reject("something_else")
    assert set(REASONS) >= {
        "corrupt_image",
        "too_large",
        "empty_text",
        "bad_type",
        "outside_corpus",
    }


def test_each_bad_value_gets_its_reason_and_a_usable_id():
    v = Validator("shard")
    rows = v.check(
        [
            {"id": "ok", "text": "fine", "label": "a"},
            {"id": 7, "text": "numeric ids are strings"},
            {"id": "int-text", "text": 5},
            {"id": "img-str", "image": "a/path.png"},
            {"id": "utf", "text": b"caf\xe9".decode("utf-8", "surrogateescape")},
            {"text": "no id"},
            {"id": "ok", "text": "again"},
            {"id": "csv", "text": "x", None: ["extra"]},
            {"id": "lst", "label": ["a", "b"]},  # the shard's labels are single values
            {"id": "dct", "label": {"a": 1}},
            {"id": "nan", "label": float("nan"), "text": "no label is fine"},
        ]
    )
    assert _errors(rows) == [
        None,
        None,
        "bad_type",
        "bad_type",
        "bad_encoding",
        "missing_id",
        "duplicate_id",
        "bad_row",
        "bad_type",
        "bad_type",
        None,
    ]
    assert [r["id"] for r in rows][1] == "7" and rows[5]["id"] == "shard#5"
    assert "text" not in rows[2] and rows[10]["label"] is None
    # The kind of labels carries over batches: a later batch of lists is the odd one out.
    assert _errors(v.check([{"id": "later", "label": ["x"]}])) == ["bad_type"]
    table = readers._rows_to_table(rows, readers.Shard("u", "parquet", "shard"), v.label_kinds())
    assert table.num_rows == len(rows) and table.column("label").type == "string"


def test_image_paths_are_confined_to_the_corpus(tmp_path):
    corpus = str(tmp_path / "corpus")
    limits = Limits(corpus=corpus)
    assert resolve_image_path("img/a.png", corpus, limits) == f"{corpus}/img/a.png"
    for path in ("../x.png", "/etc/hostname", "http://host/x.png", "s3://other/x.png", "/dev/zero"):
        assert resolve_image_path(path, corpus, limits) is None, path
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "link.png").symlink_to("/etc/hostname")
    assert resolve_image_path("link.png", corpus, limits) is None  # a link out is out
    s3 = Limits(corpus="s3://bucket/corpus", image_roots=("s3://shared/images",))
    assert resolve_image_path("a/../b.png", "s3://bucket/corpus", s3) == "s3://bucket/corpus/b.png"
    assert resolve_image_path("s3://shared/images/x.png", "s3://bucket/corpus", s3)
    assert resolve_image_path("s3://shared/imagesX/x.png", "s3://bucket/corpus", s3) is None


def test_image_reads_are_bounded(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "big.png").write_bytes(b"x" * 2000)
    (corpus / "ok.png").write_bytes(png(0))
    limits = Limits(corpus=str(corpus), max_image_bytes=1000, image_roots=("/dev",))
    rows = [
        {"id": "big", "image_path": "big.png"},
        {"id": "ok", "image_path": "ok.png"},
        {"id": "zero", "image_path": "/dev/zero"},  # allowed here, and still read only 1001 bytes
        {"id": "gone", "image_path": "nope.png"},
        {"id": "out", "image_path": "/etc/hostname"},
    ]
    attach_images(Storage(), rows, str(corpus), limits)
    assert _errors(rows) == ["too_large", None, "too_large", "missing_file", "outside_corpus"]
    assert rows[1]["image"] == png(0)


def test_a_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(TooLarge, match="20000x20000"):
        decode_image(bomb_png(), max_pixels=100_000_000)
    assert decode_image(png(0)).size == (24, 24)

    import numpy as np

    class NeverPrep:
        def prepare(self, items):
            assert not items, "a refused image reaches no preprocessing"
            return []

    class Never:
        dim = 4
        prep = NeverPrep()

        def embed_batches(self, loaders, device=None, timings=None, busy=None):
            assert not loaders, "a refused image reaches no encoder"
            return np.zeros((0, 4), np.float32)

    import pyarrow as pa

    table = pa.table({"id": ["b"], "image": [bomb_png()], readers.SHARD: ["s"]})
    out = embed_batch({"image": Never()}, table, ["image"], max_pixels=100_000_000)
    assert out.column(ERROR).to_pylist()[0].startswith("too_large: 20000x20000")


def test_the_readme_lists_every_reason_and_only_those():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.findall(r"^\| `([a-z_]+)` \|", readme, flags=re.M)
    assert listed == list(REASONS)


def test_a_rows_content_hash_keeps_its_format_so_earlier_outputs_stay_reusable():
    """Nightly reuses a row whose hash equals the one stored by an earlier run: the digest of
    length-framed id, text and image must not change with how it is computed."""
    import hashlib

    from adapt.extract.readers import content_hash

    def framed(parts):
        digest = hashlib.sha256()
        for part in parts:
            data = b"\x00" if part is None else b"\x01" + part
            digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest()[:32]

    image = bytes(range(256)) * 300
    cases = [
        ({"id": "a", "text": "t", "image": image}, [b"a", b"t", image]),
        ({"id": "b", "text": None, "image": None}, [b"b", None, None]),
        ({"id": "c", "text": "", "image": b""}, [b"c", b"", b""]),
        ({"id": "d", "image": memoryview(b"xyz")}, [b"d", None, b"xyz"]),
        ({"id": "e", "text": "é", "image": bytearray(b"\x00")}, [b"e", "é".encode(), b"\x00"]),
    ]
    for row, parts in cases:
        assert content_hash(row) == framed(parts)
    assert content_hash(cases[0][0]) != content_hash({**cases[0][0], "image": image[:-1]})
