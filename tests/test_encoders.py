"""The encoder registry and the pure embed core, on tiny random-weight models of real architectures."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from adapt import encoders
from adapt.config import EncoderSpec
from adapt.encoders import offline
from adapt.extract import readers
from adapt.extract.core import decode_image, embed_batch


def png(color=(200, 30, 30), size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,scheme,model,pretrained",
    [
        ("open_clip:ViT-B-32@laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("open_clip:ViT-B-32", "open_clip", "ViT-B-32", None),
        (
            "hf:sentence-transformers/all-MiniLM-L6-v2",
            "hf",
            "sentence-transformers/all-MiniLM-L6-v2",
            None,
        ),
        ("hf:/models/bert@x", "hf", "/models/bert@x", None),
        ("timm:efficientnet_lite0@/w/e.pth", "timm", "efficientnet_lite0", "/w/e.pth"),
        ("st:BAAI/bge-small-en-v1.5", "st", "BAAI/bge-small-en-v1.5", None),
        ("minilm-l6", "alias", "minilm-l6", None),
        ("mpnet-base", "alias", "mpnet-base", None),
    ],
)
def test_parse_names(name, scheme, model, pretrained):
    parsed = encoders.parse_name(name)
    assert (parsed.scheme, parsed.model, parsed.pretrained) == (scheme, model, pretrained)


@pytest.mark.parametrize("bad", ["clip:ViT", "hf:", "open_clip:@x", "nonsense", ""])
def test_unknown_names_list_valid_forms(bad):
    with pytest.raises(ValueError) as e:
        encoders.parse_name(bad)
    assert "open_clip:ARCH" in str(e.value) or "names no architecture" in str(e.value)


def test_modality_mismatch_is_refused():
    with pytest.raises(ValueError, match="cannot embed text"):
        encoders.check_modality(encoders.parse_name("timm:resnet18"), "text")
    with pytest.raises(ValueError, match="cannot embed image"):
        encoders.check_modality(encoders.parse_name("st:BAAI/bge-small-en-v1.5"), "image")


def _split_zip(tmp_path, files: dict[str, bytes], n: int) -> list:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    blob = buf.getvalue()
    step = -(-len(blob) // n)
    parts = []
    for i in range(n):
        parts.append(tmp_path / f"m.zip.{i + 1:03d}")
        parts[-1].write_bytes(blob[i * step : (i + 1) * step])
    return parts


def test_a_split_zip_joins_and_unpacks_once_atomically(tmp_path):
    files = {
        "m/model.safetensors": b"w" * 5000,
        "m/config.json": b"{}",
        "m/desktop.ini": b"x",
        "other/readme": b"not ours",
    }
    parts = _split_zip(tmp_path, files, 3)
    target = tmp_path / "cache" / "m-1"
    offline.unpack_split_zip(parts, "m", target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert (target / "model.safetensors").read_bytes() == b"w" * 5000
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m-1"]  # no work folder left
    with pytest.raises(RuntimeError, match="do not join into a zip"):  # parts out of order
        offline.unpack_split_zip(parts[::-1], "m", tmp_path / "cache" / "m-2")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m-1"]
    with pytest.raises(RuntimeError, match="no n/model.safetensors"):
        offline.unpack_split_zip(parts, "n", tmp_path / "cache" / "n")


def test_mpnet_without_its_packages_says_which_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "MPNET_PARTS", ["no-such-package-part-001"])
    with pytest.raises(RuntimeError, match="missing: no-such-package-part-001"):
        offline.mpnet_dir(str(tmp_path))


def test_hf_text_encoder_pools_and_normalises(tiny_models):
    enc = encoders.build_encoder(
        EncoderSpec(name=f"hf:{tiny_models['bert']}", pooling="mean"), "text"
    )
    x = enc.embed(["the cat", "a red dog smile", "the cat"])
    assert x.shape == (3, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(x[0], x[2], atol=1e-6)  # padding must not change a row's embedding
    alone = enc.embed(["the cat"])
    np.testing.assert_allclose(alone[0], x[0], atol=1e-5)
    fp = enc.fingerprint()
    assert fp["weights"].startswith("sha256:") and fp["pooling"] == "mean" and fp["dim"] == 32


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_hf_text_other_poolings(tiny_models, pooling):
    spec = EncoderSpec(name=f"hf:{tiny_models['bert']}", pooling=pooling, normalize=False)
    enc = encoders.build_encoder(spec, "text")
    x = enc.embed(["the cat", "a red dog smile"])
    assert x.shape == (2, 32) and not np.allclose(np.linalg.norm(x, axis=1), 1.0)


def test_hf_vision_encoder(tiny_models):
    enc = encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['vit']}"), "image")
    imgs = [decode_image(png()), decode_image(png((0, 0, 255), (64, 64)))]
    x = enc.embed(imgs)
    assert x.shape == (2, 32)
    assert not np.allclose(x[0], x[1])


@pytest.mark.parametrize("modality", ["image", "text"])
def test_open_clip_towers_from_a_config_file(tiny_models, modality):
    enc = encoders.build_encoder(EncoderSpec(name=f"open_clip:{tiny_models['clip']}"), modality)
    items = (
        [decode_image(png()), decode_image(png((9, 9, 9)))]
        if modality == "image"
        else ["a cat", "a dog"]
    )
    x = enc.embed(items)
    assert x.shape == (2, 16) and enc.fingerprint()["weights"] == "random"


def test_timm_onnx_matches_torch():
    """The ONNX route is faithful: same features as eager torch, to float32 rounding."""
    name = "efficientnet-lite0"
    torch_enc = encoders.build_encoder(EncoderSpec(name=name, runtime="torch"), "image")
    onnx_enc = encoders.build_encoder(EncoderSpec(name=name, runtime="onnx"), "image")
    imgs = [decode_image(png((i * 40, 90, 200 - i * 30), (50 + i, 70))) for i in range(3)]
    a, b = torch_enc.embed(imgs), onnx_enc.embed(imgs)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert onnx_enc.fingerprint()["runtime"] == "onnx" and a.shape == (3, 1280)


def test_decode_image_composites_transparency_on_white():
    img = decode_image(png((0, 0, 0, 0), (8, 8), mode="RGBA"))
    assert img.mode == "RGB" and img.getpixel((3, 3)) == (255, 255, 255)


def test_embed_batch_rejects_bad_rows_and_keeps_all(tiny_models):
    encs = {
        "text": encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['bert']}"), "text"),
        "image": encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['vit']}"), "image"),
    }
    good = png()
    table = pa.table(
        {
            "id": ["ok", "corrupt", "truncated", "empty", "noimg", "readerr"],
            "text": ["the cat", "a dog", "a dog", "   ", "the sun", "moon"],
            "image": [good, b"not an image", good[: len(good) // 2], good, None, good],
            "label": ["x", "y", "y", "x", "x", "y"],
            readers.ERROR: [None, None, None, None, None, "missing_file: a.png"],
            readers.SHARD: ["s"] * 6,
        }
    )
    out = embed_batch(encs, table, required=["image", "text"])
    assert out.num_rows == 6
    errors = dict(
        zip(out.column("id").to_pylist(), out.column(readers.ERROR).to_pylist(), strict=True)
    )
    assert errors["ok"] is None
    assert errors["corrupt"].startswith("corrupt_image: ")
    assert errors["truncated"].startswith("corrupt_image: ")
    assert errors["empty"] == "empty_text"
    assert errors["noimg"] == "missing_value: image"
    assert errors["readerr"] == "missing_file: a.png"
    emb = out.column("image_embedding").to_pylist()
    assert emb[0] is not None and len(emb[0]) == 32 and all(e is None for e in emb[1:])


def test_optional_modality_missing_is_not_a_reject(tiny_models):
    encs = {
        "text": encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['bert']}"), "text"),
        "image": encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['vit']}"), "image"),
    }
    table = pa.table(
        {
            "id": ["a"],
            "text": ["the cat"],
            "image": pa.array([None], pa.binary()),
            readers.SHARD: ["s"],
        }
    )
    out = embed_batch(encs, table, required=["text"])
    assert out.column(readers.ERROR).to_pylist() == [None]
    assert out.column("image_embedding").to_pylist() == [None]


def test_the_simulated_accelerator_is_deterministic_and_named_strictly():
    enc = encoders.build_encoder(EncoderSpec(name="sim:1x16"), "image")
    images = [Image.new("RGB", (40 + i, 30), (50 * i, 20, 200)) for i in range(3)]
    a, b = enc.embed(images), enc.embed(images)
    assert a.shape == (3, 16) and np.array_equal(a, b) and enc.forward_calls == 2
    assert not np.allclose(a[0], a[2])  # different pictures, different vectors
    text = encoders.build_encoder(EncoderSpec(name="sim:0"), "text")
    assert text.embed(["a cat", "a dog"]).shape == (2, 64)
    assert encoders.static_fingerprint(EncoderSpec(name="sim:1x16"), "image")["weights"] == "random"
    small = encoders.build_encoder(EncoderSpec(name="sim:0x16@32"), "image")
    assert small.prep.prepare(images)[0].shape == (3, 32, 32)
    assert small.embed(images).shape == (3, 16)
    for bad in ("sim:fast", "sim:1xwide", "sim:", "sim:1x16@40", "sim:1x16@big"):
        with pytest.raises(ValueError):
            encoders.parse_name(bad)


def test_calls_sharing_one_forward_thread_queue_their_forwards_one_at_a_time():
    import itertools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    enc = encoders.build_encoder(EncoderSpec(name="sim:5x16@32"), "image")
    rng = np.random.default_rng(0)
    prepared = [rng.integers(0, 255, (3, 32, 32), dtype=np.uint8) for _ in range(40)]
    loaders = [lambda k=k: prepared[k : k + 8] for k in range(0, 40, 8)]
    alone = enc.embed_batches(loaders)
    device = ThreadPoolExecutor(1)
    busy: list = []
    results: dict = {}
    start = threading.Barrier(2)

    def call(name: str) -> None:
        start.wait()
        results[name] = enc.embed_batches(loaders, device, None, busy)

    threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each call gets its own rows back, in order, as if it had run alone.
    assert np.array_equal(results["a"], alone) and np.array_equal(results["b"], alone)
    # Ten forwards of 8 rows from both calls, never two at once on the device.
    spans = sorted(busy)
    assert len(spans) == 10 and {rows for _, _, rows in spans} == {8}
    assert all(nxt[0] >= prev[1] for prev, nxt in itertools.pairwise(spans))

    def broken():
        raise OSError("a row could not be loaded")

    with pytest.raises(OSError, match="could not be loaded"):
        enc.embed_batches([loaders[0], loaders[1], broken, loaders[2]], device)
    # The device thread is free again: a failed call leaves nothing behind on it.
    assert np.array_equal(enc.embed_batches(loaders, device), alone)
    device.shutdown()


@pytest.mark.parametrize(
    "kind,modality",
    [("bert", "text"), ("vit", "image"), ("clip", "image"), ("clip", "text"), ("sim", "image")],
)
def test_the_decode_stage_preprocessor_is_the_encoders_own(tiny_models, kind, modality):
    """build_preprocessor (no weights, what decode workers run) prepares rows exactly as the
    encoder's own preprocessing does, and describes itself the same (the fingerprint)."""
    name = {
        "bert": f"hf:{tiny_models['bert']}",
        "vit": f"hf:{tiny_models['vit']}",
        "clip": f"open_clip:{tiny_models['clip']}",
        "sim": "sim:0x8",
    }[kind]
    spec = EncoderSpec(name=name)
    light = encoders.build_preprocessor(spec, modality)
    enc = encoders.build_encoder(spec, modality)
    assert light.describe() == enc.prep.describe()
    if modality == "image":
        items = [Image.new("RGB", (40 + 9 * i, 30 + 5 * i), (60 * i, 90, 200)) for i in range(3)]
    else:
        items = ["the cat", "a red dog smiles at the sun", ""]
    for a, b in zip(light.prepare(items), enc.prep.prepare(items), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_prepared_rows_embed_as_the_whole_batch_would(tiny_models):
    """Unpadded token ids collated per batch give the embeddings of padding the batch at once
    (the tokenizer's own padding), and a row embeds the same alone or in a batch."""
    import torch

    enc = encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['bert']}"), "text")
    texts = ["the cat", "a red dog smile at the bright sun today", "moon"]
    with torch.inference_mode():
        ref = enc.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        direct = enc.forward(dict(ref))
    np.testing.assert_allclose(enc.embed(texts), direct, atol=1e-5)
    np.testing.assert_allclose(enc.embed(texts[1:2])[0], direct[1], atol=1e-5)


def test_hf_text_takes_pooling_and_length_from_the_sentence_transformers_config(tiny_models):
    """Unset, pooling and truncation are the model's own: a sentence-transformers folder that
    pools CLS is pooled CLS (the same vectors as asking for CLS on the bare model), its length is
    its own (24); a bare transformers model is mean-pooled and cut at its position table (64)."""
    st_cls = encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['st-cls']}"), "text")
    bare_cls = encoders.build_encoder(
        EncoderSpec(name=f"hf:{tiny_models['bert']}", pooling="cls"), "text"
    )
    bare = encoders.build_encoder(EncoderSpec(name=f"hf:{tiny_models['bert']}"), "text")
    assert (st_cls.pooling, st_cls.prep.max_length) == ("cls", 24)
    assert (bare.pooling, bare.prep.max_length) == ("mean", 64)
    texts = ["the cat", "a red dog smile"]
    np.testing.assert_allclose(st_cls.embed(texts), bare_cls.embed(texts), atol=1e-5)
    assert st_cls.fingerprint()["pooling"] == "cls"
    assert "max_length=24" in st_cls.fingerprint()["preprocess"]
    cut = encoders.build_encoder(
        EncoderSpec(name=f"hf:{tiny_models['st-cls']}", max_length=5), "text"
    )
    assert cut.prep.max_length == 5 and len(cut.prep.prepare(["a b c d e f g h"])[0]) == 5


def test_the_offline_minilm_declares_mean_pooling_and_256_tokens():
    from adapt.encoders.st import st_settings

    settings = st_settings(offline.minilm_dir())
    assert settings == {
        "pooling": "mean",
        "max_length": 256,
        "modules": ["Transformer", "Pooling", "Normalize"],
    }


def test_hf_refuses_a_sentence_transformer_it_cannot_run_and_names_st(tiny_models):
    path = tiny_models["st-dense"]
    with pytest.raises(ValueError, match=f"Dense.*use st:{path}"):
        encoders.build_encoder(EncoderSpec(name=f"hf:{path}"), "text")


def test_st_runs_the_whole_module_stack_as_sentence_transformers_does(tiny_models):
    """st: embeds through the dense layer (8 outputs, not the 32 hidden units), as the library's
    own encode does, and a row embeds the same alone, in a batch or from the decode stage's prep."""
    from sentence_transformers import SentenceTransformer

    spec = EncoderSpec(name=f"st:{tiny_models['st-dense']}", normalize=False)
    enc = encoders.build_encoder(spec, "text")
    texts = ["the cat", "a red dog smile at the bright sun today", "moon"]
    x = enc.embed(texts)
    assert x.shape == (3, 8) and enc.dim == 8
    ref = SentenceTransformer(tiny_models["st-dense"], device="cpu").encode(texts)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    np.testing.assert_allclose(enc.embed(texts[1:2])[0], x[1], atol=1e-5)
    light = encoders.build_preprocessor(spec, "text")
    assert light.describe() == enc.prep.describe() and light.max_length == 24
    fp = enc.fingerprint()
    assert fp["pooling"] == "st:Transformer>Pooling(mean)>Dense>Normalize"
    assert fp["weights"].startswith("sha256:")
    same_dir_hf = encoders.static_fingerprint(
        EncoderSpec(name=f"hf:{tiny_models['st-cls']}"), "text"
    )
    as_st = encoders.static_fingerprint(EncoderSpec(name=f"st:{tiny_models['st-cls']}"), "text")
    assert same_dir_hf["arch"] == "hf" and as_st["arch"] == "st"
    assert encoders_fp_id(same_dir_hf) != encoders_fp_id(as_st)


def encoders_fp_id(fp: dict) -> str:
    from adapt.encoders.base import fingerprint_id

    return fingerprint_id(fp)


def test_st_refuses_a_plain_model_and_a_pooling_of_its_own(tiny_models):
    with pytest.raises(ValueError, match="not a sentence-transformers model; use hf:"):
        encoders.build_preprocessor(EncoderSpec(name=f"st:{tiny_models['bert']}"), "text")
    with pytest.raises(ValueError, match="pooling is the model's own"):
        encoders.build_encoder(
            EncoderSpec(name=f"st:{tiny_models['st-cls']}", pooling="mean"), "text"
        )


def test_prepared_rows_cross_stages_as_npy_bytes_and_come_back_as_they_were():
    from adapt.encoders.prep import from_bytes, to_bytes

    rng = np.random.default_rng(1)
    arrays = [
        rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
        np.arange(7, dtype=np.int64),
        np.zeros((0,), np.int32),
        np.float32(2.5) * np.ones((2, 3), np.float32),
        np.asfortranarray(rng.standard_normal((4, 5))),  # its own header path
    ]
    for a in arrays:
        back = from_bytes(to_bytes(a))
        assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)
    # The npy format itself: numpy reads these bytes too.
    import io

    assert np.array_equal(np.load(io.BytesIO(to_bytes(arrays[0]))), arrays[0])


def test_a_decode_batch_packs_its_rows_into_one_arrow_array_with_the_bytes_of_to_bytes():
    from adapt.encoders.prep import pack_rows, to_bytes

    rng = np.random.default_rng(2)
    arrays = [
        rng.integers(0, 255, (3, 8, 8), dtype=np.uint8),
        None,
        np.arange(9, dtype=np.int64),
        np.zeros((0,), np.int32),
        np.asfortranarray(rng.standard_normal((4, 5))),  # written in C order, as to_bytes does
        rng.standard_normal((3, 6))[:, ::2],  # not contiguous
        None,
    ]
    packed = pack_rows(arrays)
    packed.validate(full=True)
    assert packed.type == pa.binary() and packed.null_count == 2
    assert packed.to_pylist() == [None if a is None else to_bytes(a) for a in arrays]
    assert pack_rows([None, None]).to_pylist() == [None, None]
    assert len(pack_rows([])) == 0
    with pytest.raises(ValueError, match="Python objects"):
        pack_rows([np.array([{"a": 1}], dtype=object)])


def test_the_encoder_reads_prepared_rows_as_views_of_the_arrow_buffers_without_a_copy():
    from adapt.encoders.prep import from_bytes, pack_rows
    from adapt.extract.core import binary_views

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 255, (3, 4, 4), dtype=np.uint8) for _ in range(7)]
    first = pack_rows([*arrays[:3], None])
    second = pack_rows(arrays[3:]).slice(1)  # an offset into its buffers
    column = pa.chunked_array([first, pa.array([], pa.binary()), second])
    cells = binary_views(column)
    assert len(cells) == len(column) == 7 and cells[3] is None
    expected = [*arrays[:3], None, *arrays[4:]]
    for cell, want in zip(cells, expected, strict=True):
        if want is None:
            continue
        got = from_bytes(cell)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert not got.flags.writeable and not got.flags.owndata  # a view, not a copy
    # Arrow's buffers read as signed chars: from_bytes still takes its no-copy path.
    view = from_bytes(cells[0])
    data = first.buffers()[2]
    start = view.__array_interface__["data"][0]
    assert data.address <= start < data.address + data.size
    large = binary_views(pa.chunked_array([pa.array(first.to_pylist(), pa.large_binary())]))
    assert np.array_equal(from_bytes(large[2]), arrays[2]) and large[3] is None
    # A modality absent from the batch is a plain array of nulls, not a chunked one.
    assert binary_views(pa.nulls(3, pa.binary())) == [None, None, None]
    assert np.array_equal(from_bytes(binary_views(first)[1]), arrays[1])
    with pytest.raises(TypeError, match="binary column"):
        binary_views(pa.chunked_array([pa.array(["a"])]))


def test_an_encoding_process_keeps_freed_memory_on_glibc():
    import platform

    from adapt.encoders.prep import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True
