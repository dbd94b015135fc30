"""Unsupervised poisoned-row detection on a fine-tuning set: three classic defenses.

Each method maps the model's representation of every fine-tuning row
(``[n_rows, d_model]``, see :func:`probes.backdoor.features.row_features`) to an
anomaly score ``[n_rows]`` (higher = more suspicious), without any label:

- :func:`spectral_scores`: spectral signatures (Tran et al. 2018): squared
  projection of the centred representations on their top singular vector.
- :func:`clustering_scores`: activation clustering (Chen et al. 2018): PCA to a few
  dimensions, 2-means, score = how much closer a row is to the *smaller* cluster.
- :func:`mahalanobis_scores`: robust Mahalanobis distance (Minimum Covariance
  Determinant fit) in a PCA space.

A defender removes the top-scoring rows; :func:`recall_at_removal` reports which
share of the poisoned rows a removal budget of ``factor`` x the poison count catches.

Example:
    >>> X = row_features(organism, organism.rows)  # doctest: +SKIP
    >>> recall_at_removal(spectral_scores(X), organism.poisoned, factor=1.5)  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import MinCovDet
from sklearn.decomposition import PCA

from probes.backdoor.features import row_features
from probes.errors import BadInputError
from probes.estimators import to_numpy


def _features(source: Any, rows, layer: int | None, view: str) -> np.ndarray:
    """A feature matrix ``[n, d]`` as given, or recorded from a model/organism and rows."""
    if hasattr(source, "shape") or isinstance(source, list | tuple):
        X = np.asarray(to_numpy(source), dtype=np.float64)
    else:
        rows = rows if rows is not None else getattr(source, "rows", None)
        if rows is None:
            raise BadInputError("pass the fine-tuning rows (or an Organism, which carries them)")
        X = row_features(source, rows, layer=layer, view=view)
    if X.ndim != 2 or X.shape[0] < 4:
        raise BadInputError(f"need a [n_rows >= 4, d] feature matrix, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise BadInputError("features contain NaN or inf")
    return X


def spectral_scores(
    source: Any, finetune_set: Sequence | None = None, *, layer: int | None = None,
    view: str = "response",
) -> np.ndarray:  # fmt: skip
    """Spectral-signature outlier scores ``[n_rows]``.

    Args:
        source: an Organism, a LoadedModel (then pass ``finetune_set``), or features ``[n, d]``.
        finetune_set: the fine-tuning rows (default: the Organism's own).
        layer, view: where and how rows are read (see ``row_features``).
    """
    X = _features(source, finetune_set, layer, view)
    R = X - X.mean(0)
    _, _, vt = np.linalg.svd(R, full_matrices=False)
    return (R @ vt[0]) ** 2


def clustering_scores(
    source: Any, finetune_set: Sequence | None = None, *, layer: int | None = None,
    view: str = "response", n_components: int = 10, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """Activation-clustering scores ``[n_rows]``: ``d(row, big) - d(row, small)`` after 2-means.

    Rows in the smaller cluster score > 0; within a cluster, rows nearer the other
    cluster's centre rank higher. The PCA coordinates keep their variances (whitening
    them would let k-means split the clean rows along a minor direction).
    """
    X = _features(source, finetune_set, layer, view)
    k = max(1, min(n_components, X.shape[0] - 1, X.shape[1]))
    Z = PCA(n_components=k, random_state=seed).fit_transform(X - X.mean(0))
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(Z)
    sizes = np.bincount(km.labels_, minlength=2)
    small = int(np.argmin(sizes))
    d = np.linalg.norm(Z[:, None, :] - km.cluster_centers_[None], axis=-1)
    return d[:, 1 - small] - d[:, small]


def mahalanobis_scores(
    source: Any, finetune_set: Sequence | None = None, *, layer: int | None = None,
    view: str = "response", n_components: int = 10, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """Robust Mahalanobis distance ``[n_rows]`` to the bulk of the rows.

    PCA to ``n_components``, then a Minimum Covariance Determinant fit (the most
    concentrated half of the rows), so that a cluster of poisoned rows cannot hide by
    inflating the mean and covariance it is measured against.
    """
    X = _features(source, finetune_set, layer, view)
    k = max(1, min(n_components, X.shape[0] // 2 - 1, X.shape[1]))
    Z = PCA(n_components=k, random_state=seed).fit_transform(X - X.mean(0))
    mcd = MinCovDet(random_state=seed).fit(Z)
    return np.sqrt(mcd.mahalanobis(Z).clip(min=0))


METHODS = {"spectral": spectral_scores, "clustering": clustering_scores,
           "mahalanobis": mahalanobis_scores}  # fmt: skip


def recall_at_removal(scores: Any, poisoned: Sequence[bool], factor: float = 1.5) -> float:
    """Share of poisoned rows among the top ``ceil(factor * n_poisoned)`` scores.

    Args:
        scores: anomaly scores ``[n_rows]`` (higher = removed first).
        poisoned: true poison flags ``[n_rows]`` (for evaluation only).
        factor: removal budget as a multiple of the true poison count.
    """
    s = np.asarray(to_numpy(scores), dtype=np.float64).ravel()
    p = np.asarray(poisoned, dtype=bool).ravel()
    if len(s) != len(p):
        raise BadInputError(f"{len(s)} scores but {len(p)} poison flags")
    if not p.any():
        raise BadInputError("no poisoned rows: recall is undefined")
    if not factor > 0:
        raise BadInputError(f"factor must be > 0, got {factor}")
    n_remove = min(len(s), int(math.ceil(factor * p.sum())))
    removed = np.argsort(-s, kind="stable")[:n_remove]
    return float(p[removed].sum() / p.sum())


def detect_poison(
    source: Any, finetune_set: Sequence | None = None, *, layer: int | None = None,
    view: str = "response", factor: float = 1.5,
) -> dict:  # fmt: skip
    """All three methods on the same features; with known poison flags, their recall.

    Returns:
        ``{"scores": {method: [n]}, "recall": {method: r} (if flags are known), ...}``.
    """
    rows = finetune_set if finetune_set is not None else getattr(source, "rows", None)
    X = _features(source, rows, layer, view)
    scores = {name: fn(X) for name, fn in METHODS.items()}
    out: dict = {"scores": scores, "view": view, "factor": factor, "features": X}
    if rows is not None and all(hasattr(r, "poisoned") for r in rows):
        flags = [r.poisoned for r in rows]
        out["recall"] = {k: recall_at_removal(v, flags, factor) for k, v in scores.items()}
        out["n_poisoned"], out["n_rows"] = int(sum(flags)), len(flags)
    return out
