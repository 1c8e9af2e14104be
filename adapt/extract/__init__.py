"""The extract stage: frozen encoders over a corpus, embeddings to Parquet on storage.

readers.py   corpus formats (Parquet, WebDataset, folder + manifest) -> row batches
core.py      pure core: decode, check and embed one batch (`embed_batch`)
workers.py   Ray adapter: the read function and the encoder actor
io.py        storage: staged pieces, per-shard commits, the manifest (written last)
stage.py     `run_extract`: the stage, wiring the three
"""
