"""Linear probe estimators (scikit-learn API), each with one linear form on raw inputs.

Every estimator is a binary classifier whose ``decision_function`` is a log-odds
score exactly linear in the raw input: ``X @ coef_ + intercept_`` (``coef_`` float64
[d]; standardization and calibration are folded in). ``predict_proba`` is its
sigmoid and ``predict`` thresholds it at 0. The direction methods (mean difference,
LDA, PCA/LAT) calibrate their projection by a 1-D logistic fit on the training
scores. X may be numpy or torch (any device, any float dtype).

Example:
    >>> import numpy as np
    >>> X = np.r_[np.random.randn(50, 8) + 1, np.random.randn(50, 8) - 1]
    >>> y = np.r_[np.ones(50), np.zeros(50)]
    >>> probe = LogisticProbe().fit(X, y)
    >>> np.allclose(probe.decision_function(X), X @ probe.coef_ + probe.intercept_)
    True
"""

from __future__ import annotations

import numbers
import re
from contextlib import nullcontext
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.covariance import empirical_covariance, ledoit_wolf, shrunk_covariance
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from probes.errors import BadInputError

# Below this many entries a fit is gemv-bound and BLAS threads only add synchronisation
# (15x slower measured on a loaded 2-core box): run single-threaded, as sklearn's KMeans does.
_SMALL_PROBLEM = 1 << 23


def to_numpy(a: Any) -> Any:
    """Torch tensors (any device/dtype) -> numpy; anything else is returned unchanged."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        t = a.detach().cpu()
        if t.is_floating_point() and t.dtype.itemsize < 4:  # bf16/fp16 have no numpy twin
            t = t.float()
        return t.numpy()
    return a


def _blas_limit(X: np.ndarray):
    """Single-threaded BLAS for small (gemv-bound) problems, restored on exit."""
    small = X.size <= _SMALL_PROBLEM
    return threadpool_limits(limits=1, user_api="blas") if small else nullcontext()


class _LinearBinaryProbe(ClassifierMixin, BaseEstimator):
    """Shared validation and prediction for binary probes with a raw linear form."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _validate_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Validate ``X [n, d]`` and binary ``y [n]``; set ``classes_``; return X and 0/1 y."""
        try:
            X, y = validate_data(self, to_numpy(X), to_numpy(y), dtype=[np.float64, np.float32])
            kind = type_of_target(y, input_name="y", raise_unknown=True)
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
        classes = np.unique(y)
        if kind.startswith("continuous"):
            raise BadInputError(f"y must hold class labels, got continuous values ({kind} target)")
        if len(classes) < 2:
            raise BadInputError(
                f"y has only one class ({classes[0]!r}); a probe needs exactly two classes"
            )
        if kind != "binary":
            raise BadInputError(
                f"Only binary classification is supported. The type of the target is {kind} "
                f"({len(classes)} classes); a probe needs exactly two classes"
            )
        self.classes_ = classes
        return X, (y == classes[1]).astype(np.float64)

    def _set_linear(self, coef: np.ndarray, intercept: float) -> None:
        coef = np.asarray(coef, dtype=np.float64).ravel()
        if not (np.isfinite(coef).all() and np.isfinite(intercept)):
            raise BadInputError("the fit produced a non-finite direction (degenerate data?)")
        self.coef_ = coef
        self.intercept_ = float(intercept)

    def _calibrate(self, X: np.ndarray, y01: np.ndarray, w: np.ndarray) -> None:
        """Fold a 1-D logistic (Platt) calibration of ``X @ w`` into the linear form."""
        s = X @ np.asarray(w, dtype=np.float64)
        m, sd = float(s.mean()), float(s.std())
        sd = sd if sd > 1e-12 * max(1.0, abs(m)) else 1.0
        lr = LogisticRegression(C=1.0).fit(((s - m) / sd)[:, None], y01)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        self._set_linear(w * (a / sd), b - a * m / sd)

    def decision_function(self, X) -> np.ndarray:
        """Log-odds of the positive class ``classes_[1]``: ``X @ coef_ + intercept_``. Shape [n]."""
        check_is_fitted(self)
        try:
            X = validate_data(self, to_numpy(X), reset=False, dtype=[np.float64, np.float32])
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
        return X @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """``[P(classes_[0]), P(classes_[1])]`` per row. Shape [n, 2]."""
        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """Class labels: ``classes_[1]`` where the decision function is positive. Shape [n]."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(int)]


class LogisticProbe(_LinearBinaryProbe):
    """L2-regularised logistic regression (lbfgs), optionally on standardized features.

    Args:
        C: inverse regularisation strength (on the standardized scale when ``standardize``).
        max_iter: lbfgs iteration cap.
        standardize: z-score features before fitting; folded back into ``coef_``.

    Attributes:
        coef_: float64 [d], on raw inputs. intercept_: float. classes_: [2]. n_iter_: int.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, standardize: bool = True):
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize

    def fit(self, X, y) -> LogisticProbe:
        """Fit on ``X [n, d]`` and binary ``y [n]``; returns self."""
        if not (isinstance(self.C, numbers.Real) and self.C > 0):
            raise BadInputError(f"C must be a positive number, got {self.C!r}")
        if not (isinstance(self.max_iter, numbers.Integral) and self.max_iter >= 1):
            raise BadInputError(f"max_iter must be a positive int, got {self.max_iter!r}")
        X, y01 = self._validate_fit(X, y)
        mu = X.mean(0, dtype=np.float64) if self.standardize else np.zeros(X.shape[1])
        sd = X.std(0, dtype=np.float64) if self.standardize else np.ones(X.shape[1])
        sd[sd < 1e-12] = 1.0
        Z = ((X - mu) / sd).astype(X.dtype, copy=False)
        with _blas_limit(Z):
            lr = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter)).fit(Z, y01)
        w = lr.coef_[0].astype(np.float64) / sd
        self._set_linear(w, float(lr.intercept_[0]) - float(mu @ w))
        self.n_iter_ = int(np.max(lr.n_iter_))
        return self


class MeanDiffProbe(_LinearBinaryProbe):
    """Difference of class means (mass-mean probe): direction ``mean(pos) - mean(neg)``.

    Attributes:
        direction_: float64 [d], unit norm. coef_, intercept_: calibrated linear form.
    """

    def fit(self, X, y) -> MeanDiffProbe:
        """Fit on ``X [n, d]`` and binary ``y [n]``; returns self."""
        X, y01 = self._validate_fit(X, y)
        diff = _class_means(X, y01)
        self.direction_ = _unit(diff)
        self._calibrate(X, y01, self.direction_)
        return self


class LDAProbe(_LinearBinaryProbe):
    """Covariance-adjusted mean difference: ``Sigma^-1 (mean(pos) - mean(neg))``.

    ``Sigma`` is the pooled within-class covariance, shrunk towards a scaled identity.

    Args:
        shrinkage: ``"auto"`` (Ledoit-Wolf, on standardized features), a float in
            ``[0, 1]``, or ``None`` (no shrinkage; pseudo-inverse).

    Attributes:
        direction_: float64 [d] unit direction. shrinkage_: the shrinkage used.
    """

    def __init__(self, shrinkage: str | float | None = "auto"):
        self.shrinkage = shrinkage

    def fit(self, X, y) -> LDAProbe:
        """Fit on ``X [n, d]`` and binary ``y [n]``; returns self."""
        s = self.shrinkage
        if not (s is None or s == "auto" or (isinstance(s, numbers.Real) and 0 <= s <= 1)):
            raise BadInputError(f"shrinkage must be 'auto', a float in [0, 1] or None, got {s!r}")
        X, y01 = self._validate_fit(X, y)
        X64, pos = X.astype(np.float64), y01 == 1
        Xc = X64 - np.where(pos[:, None], X64[pos].mean(0), X64[~pos].mean(0))
        scale = Xc.std(0)
        scale[scale < 1e-12] = 1.0
        Zc = Xc / scale
        with _blas_limit(Zc):
            if s == "auto":
                cov, self.shrinkage_ = ledoit_wolf(Zc, assume_centered=True)
            else:
                self.shrinkage_ = 0.0 if s is None else float(s)
                cov = shrunk_covariance(
                    empirical_covariance(Zc, assume_centered=True), self.shrinkage_
                )
            diff_z = _class_means(X64, y01) / scale
            if self.shrinkage_ > 0:  # positive definite: a Cholesky-speed solve
                w = np.linalg.solve(cov, diff_z) / scale
            else:
                w = np.linalg.lstsq(cov, diff_z, rcond=None)[0] / scale
        self.direction_ = _unit(w)
        self._calibrate(X, y01, self.direction_)
        return self


class PCAProbe(_LinearBinaryProbe):
    """LAT-style probe: first principal component of positive-minus-negative differences.

    ``mode="pairs"`` (RepE's LAT): random positive/negative pairs, differences with random
    signs, top right singular vector. ``mode="means"``: the centered class means (for two
    classes, the normalized mean difference). Oriented so positives project higher.

    Args:
        mode: ``"pairs"`` or ``"means"``.
        random_state: seed for the pairing and signs.

    Attributes:
        direction_: float64 [d], unit norm.
    """

    def __init__(self, mode: str = "pairs", random_state: int | None = 0):
        self.mode = mode
        self.random_state = random_state

    def fit(self, X, y) -> PCAProbe:
        """Fit on ``X [n, d]`` and binary ``y [n]``; returns self."""
        if self.mode not in ("pairs", "means"):
            raise BadInputError(f"mode must be 'pairs' or 'means', got {self.mode!r}")
        X, y01 = self._validate_fit(X, y)
        X64 = X.astype(np.float64)
        pos, neg = X64[y01 == 1], X64[y01 == 0]
        if self.mode == "pairs":
            rng = check_random_state(self.random_state)
            n = max(len(pos), len(neg))
            diffs = pos[rng.randint(len(pos), size=n)] - neg[rng.randint(len(neg), size=n)]
            diffs *= rng.choice([-1.0, 1.0], size=(n, 1))
        else:
            means = np.stack([pos.mean(0), neg.mean(0)])
            diffs = means - means.mean(0)
        with _blas_limit(diffs):
            v = np.linalg.svd(diffs, full_matrices=False)[2][0]
        if pos.mean(0) @ v < neg.mean(0) @ v:
            v = -v
        self.direction_ = _unit(v)
        self._calibrate(X, y01, self.direction_)
        return self


class LinearProbe(_LinearBinaryProbe):
    """A probe given by its linear form (e.g. loaded from disk); ``fit`` only checks shapes.

    Args:
        coef: the direction, shape [d].
        intercept: the offset.

    Example:
        >>> p = LinearProbe.from_linear(np.ones(4), -1.0)
        >>> p.decision_function(np.eye(4)).tolist()
        [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, coef=None, intercept: float = 0.0):
        self.coef = coef
        self.intercept = intercept

    def fit(self, X, y) -> LinearProbe:
        """Adopt ``coef``/``intercept`` after checking ``X``'s width and ``y``'s classes."""
        X, _ = self._validate_fit(X, y)
        coef = np.asarray(to_numpy(self.coef), dtype=np.float64).ravel()
        if self.coef is None or coef.shape != (X.shape[1],):
            raise BadInputError(f"LinearProbe needs coef=<array [{X.shape[1]}]>, got {self.coef!r}")
        self._set_linear(coef, float(self.intercept))
        return self

    @classmethod
    def from_linear(cls, coef, intercept: float, classes=(0, 1)) -> LinearProbe:
        """A fitted probe straight from a direction ``coef [d]`` and an ``intercept``."""
        coef = np.asarray(to_numpy(coef), dtype=np.float64).ravel()
        probe = cls(coef=coef, intercept=float(intercept))
        probe._set_linear(coef, float(intercept))
        probe.classes_ = np.asarray(classes)
        probe.n_features_in_ = coef.shape[0]
        return probe


def _class_means(X: np.ndarray, y01: np.ndarray) -> np.ndarray:
    """``mean(X[y == 1]) - mean(X[y == 0])`` in float64. Shape [d]."""
    return X[y01 == 1].mean(0, dtype=np.float64) - X[y01 == 0].mean(0, dtype=np.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


METHODS: dict[str, type[_LinearBinaryProbe]] = {
    "logistic": LogisticProbe,
    "mean-diff": MeanDiffProbe,
    "lda": LDAProbe,
    "pca": PCAProbe,
}


_SPEC = re.compile(r"^\s*([A-Za-z_-]+)\s*(?:\((.*)\))?\s*$")


def make_estimator(method: str) -> _LinearBinaryProbe:
    """A fresh estimator by method name, optionally with numeric parameters.

    ``logistic``, ``mean-diff``, ``lda`` or ``pca``; parameters go in parentheses, e.g.
    ``"logistic(C=0.03)"`` or ``"lda(shrinkage=0.1)"``, so a sweep can compare
    settings the way it compares methods (each spelling is one method of the sweep).
    """
    m = _SPEC.match(method) if isinstance(method, str) else None
    if m is None:
        raise BadInputError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    name, args = m.group(1), m.group(2)
    key = {"meandiff": "mean-diff"}.get(name, name.replace("_", "-"))
    if key not in METHODS:
        raise BadInputError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    cls = METHODS[key]
    params: dict[str, float] = {}
    for part in filter(str.strip, (args or "").split(",")):
        k, eq, v = (x.strip() for x in part.partition("="))
        try:
            params[k] = int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            eq = ""
        if not eq:
            raise BadInputError(f"probe method {method!r}: write parameters as name=number")
    valid = cls().get_params()
    if bad := sorted(set(params) - set(valid)):
        raise BadInputError(
            f"probe method {method!r}: {key} has no parameter {bad[0]!r} (it has {sorted(valid)})"
        )
    return cls(**params)
