"""The score stage: downstream classifiers on raw vs PCA vs projected embeddings.

plan.py             tasks, folds and the grid (`make_plan`)
representations.py  what a classifier is scored on, built per fold from its training rows
cells.py            pure core: one classifier on one representation of one fold
workers.py          running the cells, in this process or as Ray tasks
summary.py          means, paired gains and the validation-only recommendation
io.py               storage: input fingerprints, predictions, the report folder
report/             report.json's schema, report.md, plots
stage.py            `run_score`: the stage, wiring them
"""


def __getattr__(name: str):
    # `adapt.score.read_predictions` without importing the whole stage on `import adapt.score`.
    if name == "read_predictions":
        from adapt.score.io import read_predictions

        return read_predictions
    raise AttributeError(f"module 'adapt.score' has no attribute {name!r}")
