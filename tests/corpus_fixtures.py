"""Write one small multimodal corpus in every input format, locally or to S3, with known bad rows."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from adapt.storage import Storage, join

COLORS = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (200, 200, 20)]
WORDS = ["the cat", "a red dog", "blue car", "the sun", "moon tree", "smile face"]
BAD = {"r-corrupt": "corrupt_image", "r-empty": "empty_text"}  # id -> reject reason


def png(i: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size + i % 5, size), COLORS[i % len(COLORS)]).save(buf, format="PNG")
    return buf.getvalue()


def rows(n: int, bad: bool = True) -> list[dict]:
    out = [
        {
            "id": f"r{i:04d}",
            "text": WORDS[i % len(WORDS)],
            "image": png(i),
            "label": f"c{i % 3}",
            "split": "test" if i % 5 == 0 else "train",
        }
        for i in range(n)
    ]
    if bad:
        out.append(
            {
                "id": "r-corrupt",
                "text": "the cat",
                "image": b"\x89PNG\r\n\x1a\nbroken",
                "label": "c0",
                "split": "train",
            }
        )
        out.append(
            {"id": "r-empty", "text": "  ", "image": png(1), "label": "c1", "split": "train"}
        )
    return out


def chunks(items: list, n_shards: int) -> list[list]:
    return [items[i::n_shards] for i in range(n_shards)]


def write_parquet(store: Storage, root: str, items: list[dict], n_shards: int, paths: bool = False):
    for s, part in enumerate(chunks(items, n_shards)):
        if paths:
            for r in part:
                rel = f"images/{r['id']}.png"
                store.write_bytes(join(root, rel), r.pop("image"))
                r["image_path"] = rel
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(part), buf)
        store.write_bytes(join(root, f"part-{s:03d}.parquet"), buf.getvalue())


def write_webdataset(store: Storage, root: str, items: list[dict], n_shards: int):
    for s, part in enumerate(chunks(items, n_shards)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for k, r in enumerate(part):
                key = f"{s:03d}{k:05d}"
                meta = {"id": r["id"], "label": r["label"], "split": r["split"]}
                for ext, data in (
                    ("png", r["image"]),
                    ("txt", r["text"].encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        store.write_bytes(join(root, f"shard-{s:05d}.tar"), buf.getvalue())


def write_folder(store: Storage, root: str, items: list[dict], kind: str = "jsonl"):
    manifest = []
    for r in items:
        rel = f"img/{r['id']}.png"
        store.write_bytes(join(root, rel), r["image"])
        manifest.append({"id": r["id"], "image_path": rel, "text": r["text"], "label": r["label"]})
    manifest.append(
        {"id": "r-missing", "image_path": "img/absent.png", "text": "a dog", "label": "c2"}
    )
    if kind == "jsonl":
        store.write_bytes(
            join(root, "manifest.jsonl"), "".join(json.dumps(m) + "\n" for m in manifest).encode()
        )
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "image_path", "text", "label"])
        writer.writeheader()
        writer.writerows(manifest)
        store.write_bytes(join(root, "manifest.csv"), buf.getvalue().encode())


def write_corpus(store: Storage, root: str, fmt: str, n: int = 30, n_shards: int = 3) -> int:
    """Write a corpus; return how many rows it holds (good and bad)."""
    items = rows(n)
    if fmt == "parquet":
        write_parquet(store, root, items, n_shards)
    elif fmt == "parquet-paths":
        write_parquet(store, root, items, n_shards, paths=True)
    elif fmt == "webdataset":
        write_webdataset(store, root, items, n_shards)
    elif fmt in ("folder-jsonl", "folder-csv"):
        write_folder(store, root, items, fmt.split("-")[1])
        return len(items) + 1
    return len(items)
