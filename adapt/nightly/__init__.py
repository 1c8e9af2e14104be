"""The nightly stage: extract what is new, retrain, and promote the new head only if it is better.

health.py    embedding health: NaN/inf, norms, drift against the previous version
champion.py  the champion pointer, the decision history, the lease, and the decision rule
stage.py     `run_nightly`: the stage, wiring extract, train, the comparison and promotion
"""
