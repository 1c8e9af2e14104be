"""The downstream classifiers the score stage fits: one registry, and a factory over it.

Adding a classifier is one factory function and one `CLASSIFIERS` entry: the config's list of
valid names, the score stage's order of work and the report all read this registry.

Defaults are scikit-learn's unless a comment gives a reason. Every estimator runs on one thread
(n_jobs=1): parallelism comes from running many cells at once, not from one cell. scikit-learn
and xgboost are imported inside the factories, so that loading a config imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapt.labels import check_task_type


def _logreg(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    # lbfgs often needs more than the default 100 iterations on 384-1536-d embeddings.
    return LogisticRegression(max_iter=1000, random_state=seed)


def _xgboost(seed: int) -> Any:
    from xgboost import XGBClassifier

    # 50 rounds of the histogram method at xgboost's learning rate (0.3). On the demo corpus
    # (1,525 training rows, 1,664-d, 9 classes, one core) 200 rounds took 50 s a cell, 100 took
    # 26 s and 50 took 12 s, at macro-F1 0.783 (100) and 0.795 (50); with 100 rounds xgboost was
    # 63% of the default protocol's cell time. 64 bins instead of 256: on the demo's 1,000-row
    # sample (5 folds of 800 training rows, one core) a raw:concat cell took 12.3 s against
    # 38.6 s, at macro-F1 0.725 against 0.730 (raw:image: 9.9 s against 31.4 s, 0.619 against
    # 0.616); split finding over 1,664 features x 256 bins outweighed building the histograms.
    return XGBClassifier(
        n_estimators=50, max_bin=64, tree_method="hist", n_jobs=1, random_state=seed, verbosity=0
    )


def _random_forest(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, n_jobs=1, random_state=seed)


def _svc(seed: int) -> Any:
    from sklearn.svm import SVC

    # gamma="scale" (1 / (dims * variance)) rather than the reference's gamma=1, which on
    # standardised 100+-d inputs makes every kernel value ~0. No probability calibration (an inner
    # 5-fold CV, 5x the cost; `probability` is SVC's default False, not passed because
    # scikit-learn >= 1.9 warns on any use of it): AUROC uses decision_function, which ranks rows
    # just as well.
    return SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)


# Above this many training rows the SVC's exact RBF kernel (time between the square and the cube
# of the rows) gives way to a Nystroem approximation of it and a linear SVM (linear in the rows).
SVC_EXACT_MAX_ROWS = 10_000
NYSTROEM_COMPONENTS = 1000


def _mlp(seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier

    # Early stopping holds out 10% of the training rows and stops after 10 epochs without gain
    # (turned off on small training sets, see adapt.score.cells).
    return MLPClassifier(
        hidden_layer_sizes=(256,), early_stopping=True, max_iter=300, random_state=seed
    )


def _cart(seed: int) -> Any:
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(random_state=seed)


def _knn(seed: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    # k=15 smooths over label noise; cosine suits embedding spaces. kNN has no randomness, so the
    # seed is unused.
    return KNeighborsClassifier(n_neighbors=15, metric="cosine", n_jobs=1)


# The tuned probes: logistic regression and the RBF SVC with their regularisation C chosen per
# cell by an inner stratified k-fold over the cell's training rows (macro-F1), then refitted on
# all of them with the chosen C. "logreg" and "svc" keep scikit-learn's C = 1; a practitioner's
# linear probe is tuned, and a projection has to beat that, not the untuned default.
TUNED_C = (0.01, 0.1, 1.0, 10.0, 100.0)
TUNED_FOLDS = 3


def _tuned(base: Any, seed: int) -> Any:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    return GridSearchCV(
        base,
        {"C": list(TUNED_C)},
        scoring="f1_macro",
        cv=StratifiedKFold(TUNED_FOLDS, shuffle=True, random_state=seed),
        refit=True,
        n_jobs=1,
    )


def _logreg_tuned(seed: int) -> Any:
    return _tuned(_logreg(seed), seed)


def _svc_tuned(seed: int) -> Any:
    return _tuned(_svc(seed), seed)


def chosen_c(estimator: Any) -> str:
    """What a fitted tuned probe chose, for the cell's notes ("" for any other estimator)."""
    best = getattr(estimator, "best_params_", None)
    if best is not None:
        return f"C={best['C']:g} chosen by inner {TUNED_FOLDS}-fold CV"
    inner = getattr(estimator, "estimators_", None)
    if inner and all(hasattr(e, "best_params_") for e in inner):
        values = sorted({e.best_params_["C"] for e in inner})
        return "C per label chosen by inner CV: " + ", ".join(f"{c:g}" for c in values)
    return ""


@dataclass(frozen=True)
class Classifier:
    """One registered classifier and what the score stage needs to know about it."""

    build: Callable[[int], Any]  # seed -> an unfitted estimator with the defaults
    # Accepts a (rows x labels) 0/1 target as is; the others get one binary model per label.
    native_multilabel: bool
    # Scale-sensitive: features are standardised (on training rows) unless told otherwise; trees
    # split on thresholds and do not care.
    standardize: bool
    # Its fit draws random numbers with the default settings: the MLP's initial weights and
    # early-stopping hold-out, the forest's bootstrap rows and feature draws. On a 785-row,
    # 16-class task two MLP seeds on the same split differed by 0.15 macro-F1, more than most gaps
    # between representations. (xgboost draws none unless it subsamples rows or columns;
    # logistic regression, SVC, kNN and CART are fixed by their data, up to ties.)
    seed_dependent: bool
    # Seconds per cell as measured on the demo corpus (1,270 training rows, 1,664-d, 9 classes,
    # one core), to order the work slowest first.
    cell_s: float


CLASSIFIERS: dict[str, Classifier] = {
    "logreg": Classifier(_logreg, False, True, False, 0.1),
    "xgboost": Classifier(_xgboost, False, False, False, 15.0),
    "random_forest": Classifier(_random_forest, True, False, True, 8.0),
    "svc": Classifier(_svc, False, True, False, 2.0),
    "mlp": Classifier(_mlp, True, True, True, 1.5),
    "cart": Classifier(_cart, True, False, False, 1.0),
    "knn": Classifier(_knn, True, True, False, 0.1),
    "logreg_tuned": Classifier(_logreg_tuned, False, True, False, 1.6),
    "svc_tuned": Classifier(_svc_tuned, False, True, False, 26.0),
}
NAMES = tuple(CLASSIFIERS)
# Not in the score stage's default list: the tuned probes fit 16 models a cell (svc_tuned about
# 13 times an svc cell). Ask for them with score.classifiers.
TUNED_PROBES = ("logreg_tuned", "svc_tuned")
DEFAULT = tuple(n for n in NAMES if n not in TUNED_PROBES)

NATIVE_MULTILABEL = frozenset(n for n, c in CLASSIFIERS.items() if c.native_multilabel)
STANDARDIZED_BY_DEFAULT = frozenset(n for n, c in CLASSIFIERS.items() if c.standardize)
SEED_DEPENDENT = frozenset(n for n, c in CLASSIFIERS.items() if c.seed_dependent)
_XGBOOST_SAMPLING = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")


def slow_first(names: list[str]) -> list[str]:
    """`names` from the slowest per cell to the fastest (ties keep their order): submitted in this
    order, the last cells to finish are short ones and workers stay busy to the end."""
    return sorted(names, key=lambda n: -CLASSIFIERS[n].cell_s)


def seed_dependent(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether the classifier's scores depend on its seed with these parameters."""
    if name in SEED_DEPENDENT:
        return True
    if name == "xgboost" and params:
        return any(params.get(k, 1) < 1 for k in _XGBOOST_SAMPLING)
    return False


def approximated(name: str, n_rows: int | None) -> str:
    """What `make_classifier` approximates of `name` for this many training rows ("": nothing)."""
    if name in ("svc", "svc_tuned") and n_rows is not None and n_rows > SVC_EXACT_MAX_ROWS:
        return (
            f"RBF kernel approximated ({NYSTROEM_COMPONENTS} Nystroem components, linear SVM): "
            f"{n_rows} training rows > {SVC_EXACT_MAX_ROWS}"
        )
    return ""


def make_classifier(
    name: str,
    task_type: str,
    seed: int,
    params: dict[str, Any] | None = None,
    n_rows: int | None = None,
) -> Any:
    """Build an unfitted classifier from the registry.

    `params` override the defaults and go to the base estimator (e.g. {"C": 10} for "svc"), also
    when a multilabel task wraps it in a OneVsRestClassifier. With `n_rows` (training rows) past
    SVC_EXACT_MAX_ROWS, "svc" is the Nystroem approximation (`ApproxRBFSVC`; params C and gamma).
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}: valid names are {sorted(CLASSIFIERS)}")
    check_task_type(task_type)
    if approximated(name, n_rows):
        from adapt.approx_svc import ApproxRBFSVC

        estimator = ApproxRBFSVC(n_components=NYSTROEM_COMPONENTS, random_state=seed)
        if name == "svc_tuned":
            estimator = _tuned(estimator, seed)
    else:
        estimator = CLASSIFIERS[name].build(seed)
    if params:
        valid = set(estimator.get_params(deep=False))
        try:
            estimator.set_params(**params)
        except (ValueError, TypeError) as e:
            raise ValueError(f"classifier {name!r} rejected params {params!r}: {e}") from e
        # xgboost stores unknown keys instead of rejecting them, and only warns at fit time.
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ValueError(
                f"classifier {name!r} has no parameter(s) {unknown}: valid ones are {sorted(valid)}"
            )
    if task_type == "multilabel" and name not in NATIVE_MULTILABEL:
        from sklearn.multiclass import OneVsRestClassifier

        estimator = OneVsRestClassifier(estimator)
    return estimator


def default_standardize(classifier: str) -> bool:
    """Whether `score_cell` standardises features for this classifier unless told otherwise."""
    return classifier in STANDARDIZED_BY_DEFAULT
