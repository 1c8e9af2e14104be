"""The extract stage: frozen encoders over a corpus, embeddings to Parquet on storage.

readers.py   corpus formats (Parquet, WebDataset, folder + manifest) -> row batches
validate.py  every row checked as it is read; the reasons a row is rejected
core.py      pure core: decode, check and preprocess a batch (`prepare_batch`), embed prepared
             rows (`encode_batch`); both in one process (`embed_batch`)
workers.py   Ray adapter: the read, decode and encode steps of the pipeline
io.py        storage: staged pieces, per-shard commits, the manifest (written last)
stage.py     `run_extract`: the streaming pipeline, a commit per shard as it completes
"""
