"""The apply stage: a trained head over every committed embeddings file.

core.py      pure core: one embeddings table -> its projections (`project_table`)
workers.py   Ray adapter: an actor that loads the head once
stage.py     `apply_head`: the stage, manifest last
"""
