"""The train stage: a small contrastive projection head over the frozen embeddings.

heads.py     the head modules (pure torch)
losses.py    the contrastive losses and the one registry the fit loop calls
fit.py       pure core: input normalisation, batches, the epoch loop (`fit_head`)
search.py    hyper-parameter selection on a hold-out of the training rows
plan.py      which rows train and which stop early, decided once on the driver
workers.py   Ray adapter: the Ray Train worker loop and its trainer
io.py        storage: checkpoints, the safetensors codec, the search's rows
artifact.py  a trained head on storage: save, find, load (`load_head`)
stage.py     `run_train`: the stage, wiring them
"""
