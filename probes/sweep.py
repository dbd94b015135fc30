"""Layer sweeps: fit a probe per layer (and method), pick the best on validation data.

Two forms, chosen by the type of the first argument:

- ``layer_sweep(acts_train, y_train, acts_val, y_val, ...)`` on recorded
  :class:`~probes.activations.Activations`;
- ``layer_sweep(model, train=(prompts, labels), val=(prompts, labels), ...)``
  records through :func:`probes.record` first.

Each (method, layer) gets validation AUROC, TPR at the target FPR (threshold
calibrated on a separate benign ``control`` set when given, else on the validation
negatives) and bootstrap CIs. :meth:`SweepResult.best` selects by validation
metrics only; the test set never enters.

Example:
    >>> res = layer_sweep(model, train=(p_tr, y_tr), val=(p_va, y_va), method=["logistic", "pca"])  # doctest: +SKIP
    >>> res.plot().show()  # doctest: +SKIP
    >>> res.best().save("harm.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probes.activations import Activations, prompts_hash
from probes.errors import BadInputError
from probes.estimators import make_estimator
from probes.metrics import aggregate_tokens, auroc, calibrate_threshold, evaluate_scores, labels_01
from probes.models import LoadedModel
from probes.probe import Probe
from probes.record import record

__all__ = ["Ensemble", "SweepResult", "aggregate_tokens", "ensemble", "layer_sweep"]

_IDENTITY_KEYS = ("model", "digest", "d_model", "n_layers")


@dataclass
class SweepResult:
    """Per-(method, layer) validation results and the fitted estimators.

    Attributes:
        rows: one dict per (method, layer): ``auroc``, ``auroc_ci``, ``tpr``, ``tpr_ci``,
            ``threshold``, ``fpr`` (achieved on val negatives), ``accuracy``, ``train_auroc``.
        estimators: ``{(method, layer): fitted estimator}``.
        calibration: ``"control"`` or ``"val negatives"`` (where thresholds came from).
    """

    rows: list[dict]
    estimators: dict[tuple[str, int], Any]
    site: str
    position: str
    fpr: float
    calibration: str
    model_identity: dict = field(default_factory=dict)
    data_hash: str = ""

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.rows))

    @property
    def layers(self) -> list[int]:
        return sorted({r["layer"] for r in self.rows})

    def probe(self, method: str, layer: int) -> Probe:
        """The probe fitted for ``(method, layer)``, with its provenance and metrics."""
        found = [r for r in self.rows if r["method"] == method and r["layer"] == layer]
        if not found:
            raise BadInputError(f"no result for method {method!r} at layer {layer}")
        r = found[0]
        metrics = {k: v for k, v in r.items() if k not in ("method", "layer", "threshold")}
        return Probe(
            self.estimators[method, layer], self.site, layer, self.position, method,
            threshold=r["threshold"], calibration_fpr=self.fpr,
            model_identity=dict(self.model_identity), data_hash=self.data_hash,
            metrics=metrics | {"calibration": self.calibration},
        )  # fmt: skip

    def ranked(self, method: str | None = None, by: str = "auroc") -> list[dict]:
        """Rows best first by validation ``"auroc"`` (then TPR) or ``"tpr"`` (then AUROC).

        ``"tpr"`` ranks by the operating point a monitor is deployed at: TPR at the
        threshold calibrated on the benign control set (or the val negatives).
        """
        if by not in ("auroc", "tpr"):
            raise BadInputError(f"by must be 'auroc' or 'tpr', got {by!r}")
        rows = [r for r in self.rows if method is None or r["method"] == method]
        if not rows:
            raise BadInputError(f"no results for method {method!r}; swept {self.methods}")
        other = "tpr" if by == "auroc" else "auroc"
        return sorted(rows, key=lambda r: (-r[by], -r[other], r["layer"]))

    def top(self, k: int = 3, method: str | None = None, by: str = "auroc") -> list[Probe]:
        """The ``k`` best probes by validation AUROC then TPR (or ``by="tpr"``: TPR then AUROC)."""
        return [self.probe(r["method"], r["layer"]) for r in self.ranked(method, by)[:k]]

    def best(self, method: str | None = None, by: str = "auroc") -> Probe:
        """The best probe by validation ``by`` (ties: the other metric, then lower layer)."""
        return self.top(1, method, by)[0]

    def table(self) -> list[dict]:
        """The rows, sorted by method then layer (for printing or a DataFrame)."""
        return sorted(self.rows, key=lambda r: (self.methods.index(r["method"]), r["layer"]))

    def plot(self, title: str | None = None):
        """Plotly figure: validation AUROC and TPR@FPR vs layer, CI bands, one trace per method."""
        from probes.plots import sweep_figure  # plotly loads only when a figure is asked for

        return sweep_figure(self.table(), fpr=self.fpr, title=title)

    def __repr__(self) -> str:
        b = max(self.rows, key=lambda r: (r["auroc"], r["tpr"]))
        return (f"SweepResult(methods={self.methods}, layers={len(self.layers)}, site={self.site!r}, "
                f"position={self.position!r}, best={b['method']}@{b['layer']} auroc={b['auroc']:.3f})")  # fmt: skip


def _data_hash(acts: Activations, y: np.ndarray) -> str:
    ph = acts.provenance.get("prompts_sha256") or prompts_hash(acts.prompts)
    return hashlib.sha256(json.dumps([ph, y.tolist()]).encode()).hexdigest()


def _identity(parts: Sequence[Activations | None]) -> dict:
    idents = [{k: a.provenance[k] for k in _IDENTITY_KEYS if k in a.provenance}
              for a in parts if a is not None]  # fmt: skip
    digests = {i.get("digest") for i in idents if i.get("digest")}
    if len(digests) > 1:
        raise BadInputError("train/val/control activations were recorded from different models")
    return idents[0]


def _layer_x(acts: Activations, site: str, layer: int, position: str) -> np.ndarray:
    return np.ascontiguousarray(acts.layer(site, layer, position).float().cpu().numpy())


def sweep_activations(
    acts_train: Activations, y_train: Any, acts_val: Activations, y_val: Any, *,
    method: str | Sequence[str] = "logistic", site: str = "resid_post",
    position: str | None = None, layers: Sequence[int] | None = None,
    control: Activations | None = None, fpr: float = 0.01, n_boot: int = 1000, seed: int = 0,
) -> SweepResult:  # fmt: skip
    """Fit and evaluate probes at every recorded layer (see module docstring).

    Args:
        acts_train, acts_val: activations with one or more single-token positions.
        y_train, y_val: 0/1 labels (1 = harmful), lengths ``len(acts_*)``.
        method: one method name or a list (``logistic``, ``mean-diff``, ``lda``, ``pca``).
        position: which recorded position (default: the only one).
        layers: subset of the recorded layers (default: all of them).
        control: benign control activations for threshold calibration.
        fpr: target false-positive rate.
        n_boot: bootstrap resamples for the CIs.
    """
    for name, a in (("acts_train", acts_train), ("acts_val", acts_val), ("control", control)):
        if a is not None and not isinstance(a, Activations):
            raise BadInputError(f"{name} must be an Activations object, got {type(a).__name__}")
    ytr = labels_01(y_train, len(acts_train), "y_train")
    yva = labels_01(y_val, len(acts_val), "y_val")
    if position is None and len(acts_train.positions) != 1:
        raise BadInputError(f"several positions recorded {acts_train.positions}; pass position=")
    position = position or acts_train.positions[0]
    if position == "all":
        raise BadInputError("layer_sweep needs a single-token position (last, eoi[-k], mean)")
    methods = [method] if isinstance(method, str) else list(method)
    for m in methods or [""]:
        make_estimator(m)  # fail fast on an unknown (or no) method name
    parts = [a for a in (acts_train, acts_val, control) if a is not None]
    common = sorted(set.intersection(*(set(a.layers) for a in parts)))
    layers = common if layers is None else [int(x) for x in layers]
    if not layers or set(layers) - set(common):
        raise BadInputError(f"layers {layers} are not all recorded in every set ({common})")
    rows, estimators = [], {}
    for layer in layers:
        Xtr, Xva = (_layer_x(a, site, layer, position) for a in (acts_train, acts_val))
        Xc = _layer_x(control, site, layer, position) if control is not None else None
        for m in methods:
            est = make_estimator(m).fit(Xtr, ytr)
            s_tr = est.decision_function(Xtr)
            s_va = est.decision_function(Xva)
            ctrl = est.decision_function(Xc) if Xc is not None else s_va[yva == 0]
            r = evaluate_scores(s_va, yva, ctrl, fpr, n_boot=n_boot, seed=seed)
            r |= {"method": m, "layer": layer, "train_auroc": auroc(ytr, s_tr),
                  "train_score_mean": float(s_tr.mean()), "train_score_std": float(s_tr.std())}  # fmt: skip
            rows.append(r)
            estimators[m, layer] = est
    return SweepResult(
        rows, estimators, site, position, fpr, "control" if control is not None else "val negatives",
        _identity(parts), _data_hash(acts_train, ytr),
    )  # fmt: skip


def _pair(x: Any, name: str) -> tuple[list[str], Any]:
    if not (isinstance(x, (tuple, list)) and len(x) == 2) or isinstance(x[0], str):
        raise BadInputError(f"{name} must be a (prompts, labels) pair")
    return list(x[0]), x[1]


def sweep_model(
    model: LoadedModel, *, train: tuple[Sequence[str], Any], val: tuple[Sequence[str], Any],
    control: Sequence[str] | None = None, method: str | Sequence[str] = "logistic",
    positions: str = "last", site: str = "resid_post", layers: Any = "all", fpr: float = 0.01,
    n_boot: int = 1000, seed: int = 0, **record_kw: Any,
) -> SweepResult:  # fmt: skip
    """Record ``train``/``val`` (and benign ``control``) prompts, then sweep layers.

    Args:
        model: a :class:`~probes.models.LoadedModel`.
        train, val: ``(prompts, labels)`` pairs; labels 0/1.
        control: benign prompts for threshold calibration (else val negatives).
        positions: one single-token position (``last``, ``eoi[-k]``, ``mean``).
        record_kw: passed to :func:`probes.record` (``system``, ``max_tokens``, ...).
    """
    if not isinstance(positions, str) or positions in ("eoi", "all"):
        raise BadInputError(f"positions must be one single-token position, got {positions!r}")
    (ptr, ytr), (pva, yva) = _pair(train, "train"), _pair(val, "val")
    labels_01(ytr, len(ptr), "train labels"), labels_01(yva, len(pva), "val labels")

    def rec(prompts: Sequence[str]) -> Activations:
        return record(model, prompts, sites=[site], layers=layers, positions=positions, **record_kw)

    ctrl = rec(list(control)) if control is not None else None
    return sweep_activations(rec(ptr), ytr, rec(pva), yva, method=method, site=site,
                             control=ctrl, fpr=fpr, n_boot=n_boot, seed=seed)  # fmt: skip


def layer_sweep(source: LoadedModel | Activations, *args: Any, **kwargs: Any) -> SweepResult:
    """Sweep probes over layers; dispatches on ``source``.

    ``layer_sweep(acts_train, y_train, acts_val, y_val, *, method, site, position,
    layers, control, fpr, n_boot, seed)`` -> :func:`sweep_activations`;
    ``layer_sweep(model, *, train, val, control, method, positions, site, layers, fpr)``
    -> :func:`sweep_model`.
    """
    if isinstance(source, LoadedModel):
        return sweep_model(source, *args, **kwargs)
    if isinstance(source, Activations):
        return sweep_activations(source, *args, **kwargs)
    got = type(source).__name__
    raise BadInputError(f"layer_sweep takes a LoadedModel or Activations first, got {got}")


@dataclass
class Ensemble:
    """Mean of standardized scores of several probes (e.g. the top layers of a sweep).

    ``score = mean_i (s_i - mean_i) / std_i``; flag when ``score > threshold``.
    """

    probes: list[Probe]
    means: list[float]
    stds: list[float]
    threshold: float | None = None

    def score_activations(self, acts: Activations) -> Tensor:
        """Ensemble scores from activations holding every member's site/layer. Shape [n]."""
        parts = [(p.score_activations(acts).cpu() - m) / s
                 for p, m, s in zip(self.probes, self.means, self.stds)]  # fmt: skip
        return torch.stack(parts).mean(0)

    def score(self, model: LoadedModel, prompts: Sequence[str], **record_kw: Any) -> Tensor:
        """Record all members' layers in one pass and score. Shape [n]."""
        for p in self.probes:
            p.check_model(model)
        sites = sorted({p.site for p in self.probes})
        positions = sorted({p.position for p in self.probes})
        layers = sorted({p.layer for p in self.probes})
        acts = record(model, prompts, sites=sites, layers=layers, positions=positions, **record_kw)
        return self.score_activations(acts)

    def flags(self, scores: Any) -> Tensor:
        if self.threshold is None:
            raise BadInputError("this ensemble has no threshold; pass control= to ensemble()")
        return torch.as_tensor(np.asarray(scores)) > self.threshold


def ensemble(
    probes: Sequence[Probe], reference: Activations | None = None, *,
    control: Activations | None = None, fpr: float = 0.01,
) -> Ensemble:  # fmt: skip
    """Combine probes (usually several layers) into a mean-of-standardized-scores ensemble.

    Args:
        probes: fitted probes on the same model.
        reference: activations to standardize each member's scores on; by default the
            training-score statistics stored by :func:`layer_sweep` in ``probe.metrics``.
        control: benign activations to calibrate the ensemble threshold at ``fpr``.

    Example:
        >>> ens = ensemble(result.top(3), control=acts_control)  # doctest: +SKIP
    """
    probes = list(probes)
    if not probes:
        raise BadInputError("ensemble needs at least one probe")
    digests = {p.model_identity.get("digest") for p in probes} - {None}
    if len(digests) > 1:
        raise BadInputError("the probes were made for different models")
    means, stds = [], []
    for p in probes:
        if reference is not None:
            s = p.score_activations(reference).cpu().numpy()
            m, sd = float(s.mean()), float(s.std())
        elif "train_score_mean" in p.metrics and "train_score_std" in p.metrics:
            m, sd = float(p.metrics["train_score_mean"]), float(p.metrics["train_score_std"])
        else:
            raise BadInputError(f"{p} has no score statistics; pass reference=<Activations>")
        means.append(m)
        stds.append(sd if sd > 0 else 1.0)
    ens = Ensemble(probes, means, stds)
    if control is not None:
        ens.threshold = calibrate_threshold(ens.score_activations(control).numpy(), fpr)
    return ens
