"""Corpus builders: the shipped demo corpus, the shared writer, sampling, splitting, row parsing.

Everything here runs offline in a few seconds. Tests that download packages (npm, apt) carry the
``network`` marker, deselected by default; run them with ``pytest -m network tests/test_corpora.py``.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from adapt.bench.corpora import CORPORA, get_builder
from adapt.bench.corpora.common import (
    METADATA_KEY,
    ROWS_PER_GROUP,
    CorpusInfo,
    Skipped,
    finish,
    read_corpus_info,
    stratified_sample,
    stratified_split,
    write_corpus,
)

DEMO = Path(__file__).resolve().parents[1] / "adapt" / "data" / "demo" / "emoji"
EMOJI_CATEGORIES = {
    "Activities",
    "Animals & Nature",
    "Flags",
    "Food & Drink",
    "Objects",
    "People & Body",
    "Smileys & Emotion",
    "Symbols",
    "Travel & Places",
}
INFO = CorpusInfo(name="tiny", source="test", licence="CC0-1.0", builder_version="0")


@pytest.fixture(scope="module")
def demo() -> pa.Table:
    return pq.read_table(DEMO)


def tiny_rows(n: int = 600) -> list[dict]:
    labels = ["a", "b", "c"]
    return [
        {"id": f"r{i:04d}", "text": f"row {i}", "label": labels[i % 3], "label_fine": f"f{i % 7}"}
        for i in range(n)
    ]


# --- the shipped demo corpus ---


def test_demo_files_schema_and_metadata(demo: pa.Table) -> None:
    parts = sorted(DEMO.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{k:05d}.parquet" for k in range(4)]
    assert sum(p.stat().st_size for p in parts) < 10_000_000
    assert demo.schema.names == ["id", "text", "image", "label", "split", "label_subcategory"]
    assert demo.schema.field("id").type == pa.string() and not demo.schema.field("id").nullable
    assert demo.schema.field("image").type == pa.binary()
    for name in ("text", "label", "split", "label_subcategory"):
        assert demo.schema.field(name).type == pa.string()
    for k, part in enumerate(parts):
        info = read_corpus_info(part)
        assert info["source"] == "npm:emoji-datasource-google@16.0.0"
        assert "Apache-2.0" in info["licence"]
        assert (info["part"], info["num_files"], info["num_rows_total"]) == (k, 4, demo.num_rows)
        meta = pq.ParquetFile(part).metadata
        assert all(meta.row_group(g).num_rows <= ROWS_PER_GROUP for g in range(meta.num_row_groups))


def test_demo_rows(demo: pa.Table) -> None:
    rows = demo.to_pylist()
    assert 1800 <= len(rows) <= 2000
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(ids)
    assert all(r["text"] and r["text"].strip() == r["text"] for r in rows)
    assert {r["label"] for r in rows} == EMOJI_CATEGORIES
    assert all(r["label_subcategory"] for r in rows)
    for r in rows:
        with Image.open(io.BytesIO(r["image"])) as im:
            im.load()
            assert im.format == "PNG" and im.size == (64, 64)


def test_demo_split_is_80_20_per_class(demo: pa.Table) -> None:
    counts = Counter(zip(demo["label"].to_pylist(), demo["split"].to_pylist(), strict=True))
    assert {s for _, s in counts} == {"train", "test"}
    for label in EMOJI_CATEGORIES:
        n = counts[(label, "train")] + counts[(label, "test")]
        assert abs(counts[(label, "test")] - 0.2 * n) <= 1, label


# --- the shared writer ---


def test_write_corpus_is_deterministic_and_sharded(tmp_path: Path) -> None:
    rows = tiny_rows()
    first = write_corpus(rows, tmp_path / "a", INFO, num_files=3)
    second = write_corpus(rows, tmp_path / "b", INFO, num_files=3)
    assert first == second
    names = sorted(first[0])
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    back = [pq.read_table(tmp_path / "a" / name) for name in names]
    assert [t.num_rows for t in back] == [200, 200, 200]
    assert sorted(r["id"] for t in back for r in t.to_pylist()) == [r["id"] for r in rows]
    meta = pq.ParquetFile(tmp_path / "a" / names[0]).metadata
    assert meta.num_row_groups == 1 and meta.row_group(0).column(0).compression == "ZSTD"
    info = json.loads(pq.read_schema(tmp_path / "a" / names[0]).metadata[METADATA_KEY])
    assert info["name"] == "tiny" and info["licence"] == "CC0-1.0"
    # A text-only corpus has no image column.
    assert back[0].schema.names == ["id", "text", "label", "label_fine"]


def test_write_corpus_row_groups_and_stale_parts(tmp_path: Path) -> None:
    write_corpus(tiny_rows(), tmp_path, INFO, num_files=4)
    sizes, removed = write_corpus(tiny_rows(), tmp_path, INFO, num_files=1)
    assert removed == ["part-00001.parquet", "part-00002.parquet", "part-00003.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]
    meta = pq.ParquetFile(tmp_path / "part-00000.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [256, 256, 88]


def test_write_corpus_multi_label_and_images(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, format="PNG")
    rows = [
        {"id": "x", "image": png.getvalue(), "label": ["a", "b"]},
        {"id": "y", "image": None, "label": ["b"]},
    ]
    write_corpus(rows, tmp_path, INFO, num_files=1)
    table = pq.read_table(tmp_path)
    assert table.schema.field("label").type == pa.list_(pa.string())
    assert table["image"].to_pylist() == [png.getvalue(), None]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "label": "x"}, {"id": "a", "label": "y"}], "duplicate id"),
        ([{"id": "", "label": "x"}], "non-empty string id"),
        ([{"id": "a", "label": "x", "colour": "red"}], "unknown corpus columns"),
        ([{"id": "a", "text": "t"}], "no label"),
    ],
)
def test_write_corpus_rejects_bad_rows(tmp_path: Path, rows: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_corpus(rows, tmp_path, INFO, num_files=1)


def test_finish_splits_samples_and_requires_sorted_rows(tmp_path: Path) -> None:
    summary = finish(tiny_rows(), tmp_path, INFO, Skipped(), num_files=2, max_rows=30)
    assert summary.rows == 30
    assert summary.classes == {k: {"train": 8, "test": 2} for k in ("a", "b", "c")}
    assert len(summary.skipped["not sampled (--max-rows 30)"]) == 570
    assert "30 rows, 3 classes" in summary.format()
    with pytest.raises(ValueError, match="sorted by id"):
        finish(tiny_rows()[::-1], tmp_path, INFO, Skipped())


# --- sampling and splitting ---


def test_stratified_split_per_class_and_stable() -> None:
    ids = [f"i{k}" for k in range(103)]
    labels = ["big"] * 90 + ["small"] * 10 + ["pair"] * 2 + ["one"]
    split = stratified_split(ids, labels, 0.2, seed=0)
    test = Counter(lb for lb, s in zip(labels, split, strict=True) if s == "test")
    assert test == {"big": 18, "small": 2, "pair": 1}  # a single-row class stays in train
    assert split == stratified_split(ids, labels, 0.2, seed=0)
    assert split != stratified_split(ids, labels, 0.2, seed=1)
    # One more row in a class moves at most that row across the line.
    grown = stratified_split(ids + ["zz"], labels + ["small"], 0.2, seed=0)
    assert sum(a != b for a, b in zip(split, grown[:-1], strict=True)) <= 1


def test_stratified_sample_keeps_every_class() -> None:
    ids = [f"i{k:03d}" for k in range(1000)]
    labels = ["a"] * 900 + ["b"] * 97 + ["c"] * 3
    keep = stratified_sample(ids, labels, 100, seed=0)
    assert len(keep) == 100 and keep == sorted(keep)
    assert Counter(labels[i] for i in keep) == {"a": 89, "b": 10, "c": 1}
    assert keep == stratified_sample(ids, labels, 100, seed=0)
    assert stratified_sample(ids, labels, 5000) == list(range(1000))
    with pytest.raises(ValueError, match="number of classes"):
        stratified_sample(ids, labels, 2)


# --- builders' row parsing, on local inputs ---


def test_registry_lists_the_builders() -> None:
    assert sorted(CORPORA) == ["emoji", "icd10", "tuxpaint"]
    assert all(callable(get_builder(name)) for name in CORPORA)
    with pytest.raises(KeyError, match="choose one of"):
        get_builder("nope")


def test_emoji_rows_from_package() -> None:
    from adapt.bench.corpora.emoji import rows_from_package

    png = io.BytesIO()
    Image.new("RGBA", (2, 2)).save(png, format="PNG")
    base = {"has_img_google": True, "subcategory": "s"}
    entries = [
        base | {"short_name": "b", "name": "BEE", "image": "b.png", "category": "Animals"},
        base
        | {
            "short_name": "a",
            "name": "Ant",
            "image": "a.png",
            "category": "Animals",
            "skin_variations": {"1F3FB": {}},
        },
        base | {"short_name": "tone", "name": "T", "image": "t.png", "category": "Component"},
        base | {"short_name": "gone", "name": "G", "image": "missing.png", "category": "Animals"},
        base | {"short_name": "bad", "name": "B", "image": "bad.png", "category": "Animals"},
    ]
    images = {
        "a.png": png.getvalue(),
        "b.png": png.getvalue(),
        "t.png": png.getvalue(),
        "bad.png": b"not a png",
    }
    skipped = Skipped()
    rows = rows_from_package(entries, images, skipped)
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [
        ("a", "ant", "Animals"),
        ("b", "bee", "Animals"),
    ]
    assert sorted(len(v) for v in skipped.by_reason.values()) == [1, 1, 1, 1]


def test_tuxpaint_rows_from_stamps(tmp_path: Path) -> None:
    from adapt.bench.corpora.tuxpaint import english_caption, rows_from_stamps, shrink_image

    png = io.BytesIO()
    Image.new("RGBA", (600, 300), "blue").save(png, format="PNG")
    (tmp_path / "animals" / "birds").mkdir(parents=True)
    (tmp_path / "food").mkdir()
    (tmp_path / "animals" / "birds" / "duck.png").write_bytes(png.getvalue())
    (tmp_path / "animals" / "birds" / "duck.txt").write_text("A duck.\nde.utf8=Eine Ente.\n")
    (tmp_path / "animals" / "birds" / "duck_mirror.png").write_bytes(png.getvalue())
    (tmp_path / "food" / "pie.svg").write_text("<svg/>")
    (tmp_path / "food" / "pie.txt").write_text("A pie.\n")
    (tmp_path / "food" / "gift.txt").write_text("A gift.\n")
    (tmp_path / "food" / "bread.png").write_bytes(png.getvalue())
    (tmp_path / "food" / "bread.txt").write_text("fr.utf8=Du pain.\n\nSome bread.\n")
    skipped = Skipped()
    rows = rows_from_stamps(tmp_path, skipped)
    assert [(r["id"], r["text"], r["label"], r["label_subcategory"]) for r in rows] == [
        ("animals/birds/duck", "A duck.", "animals", "animals/birds"),
        ("food/bread", "Some bread.", "food", "food"),
    ]
    assert rows[0]["image"] == png.getvalue()  # bytes kept as shipped
    assert sum(len(v) for v in skipped.by_reason.values()) == 3
    assert english_caption("de.utf8=Ente\n") is None
    small = shrink_image(png.getvalue(), max_bytes=10, side_px=64)
    with Image.open(io.BytesIO(small)) as im:
        assert im.format == "PNG" and im.size == (64, 32)


def test_icd10_rows() -> None:
    from adapt.bench.corpora.icd10 import chapter_title, load_rows

    assert chapter_title("Congenital malformations (Q00-QA0)") == "Congenital malformations"
    rows = load_rows(Skipped())
    ids = [r["id"] for r in rows]
    assert len(rows) > 70_000 and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len({r["label"] for r in rows}) == 22
    assert all(r["text"] and not r["label"].endswith(")") for r in rows)
    first = rows[0]
    assert first["id"] == "A00.0" and first["label_block"] == "A00-A09"
    assert first["label"] == "Certain infectious and parasitic diseases"


# --- full builds from the registries ---


@pytest.mark.network
@pytest.mark.parametrize("name", ["emoji", "tuxpaint"])
def test_build_from_registry_is_deterministic(name: str, tmp_path: Path) -> None:
    build = get_builder(name)
    cache = tmp_path / "cache"
    first = build(out_dir=tmp_path / "a", cache_dir=cache, num_files=2, max_rows=200)
    second = build(out_dir=tmp_path / "b", cache_dir=cache, num_files=2, max_rows=200)
    assert first.rows == second.rows == 200
    for part in sorted((tmp_path / "a").glob("part-*.parquet")):
        assert part.read_bytes() == (tmp_path / "b" / part.name).read_bytes()


@pytest.mark.network
def test_emoji_build_matches_shipped_demo(tmp_path: Path) -> None:
    get_builder("emoji")(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    for part in sorted(DEMO.glob("part-*.parquet")):
        # Contents, not bytes: another pyarrow version may encode the same table differently.
        assert pq.read_table(tmp_path / "out" / part.name).equals(pq.read_table(part))
