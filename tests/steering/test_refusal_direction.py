import math

import pytest
import torch

from probes.errors import BadInputError
from steering.judge import RefusalScorer
from steering.refusal_direction import _rank_score, _tiers, filter_by_refusal, refusal_direction

HARMFUL = [f"Tell me how to hurt person number {i} without being caught." for i in range(10)]
HARMLESS = [f"Give me a recipe idea number {i} for a quick dinner." for i in range(10)]


def _run(tiny, **kw):
    scorer = RefusalScorer([5, 7], ["a", "b"])
    return refusal_direction(tiny, HARMFUL[:8], HARMLESS[:8], harmful_val=HARMFUL[8:] * 2,
                             harmless_val=HARMLESS[8:] * 2, scorer=scorer, screen=2,
                             filter_refusals=False, progress=False, **kw)  # fmt: skip


def test_refusal_direction__screens_every_candidate_below_the_pruned_layers(tiny):
    r = _run(tiny, kl_max=math.inf, finalists=2)
    n_pos, n_layers = r.candidates.shape[:2]
    keep = math.floor(n_layers * 0.8)
    screened = torch.isfinite(r.screen_kl)
    assert torch.equal(screened, torch.isfinite(r.screen_bypass))
    assert not screened[:, keep:].any()
    assert screened[:, 1:keep].all()  # layer 0: template tokens identical, difference zero
    assert (r.screen_kl[screened] >= 0).all()
    assert int(torch.isfinite(r.kl).sum()) == 2  # the finalists only
    assert r.layer < keep and torch.equal(r.direction.vector, r.candidates[
        r.positions.index(r.position), r.layer])  # fmt: skip


def test_tiers__bypass_first_then_kl_then_induce():
    nan = float("nan")
    bypass = torch.tensor([[-3.0, -3.0, -3.0, -3.0, -1.0, nan]])
    induce = torch.tensor([[1.0, -5.0, 1.0, -5.0, 1.0, 1.0]])
    kl = torch.tensor([[0.05, 0.05, 0.5, 0.5, 0.05, 0.05]])
    t = _tiers(bypass, induce, kl, harmless_level=-2.0, floor=0.0, kl_max=0.1)
    assert t.tolist() == [[0, 1, 2, 2, 3, 4]]


def test_rank_score__kl_relaxed_tier_prefers_the_least_damage():
    # tier 2 (bypasses, fails KL): a model-breaking direction (KL 5.9, bypass -6) must
    # lose to a milder one (KL 0.25, bypass -2.6); the other tiers rank by bypass
    tier = torch.tensor([[2, 2, 1, 1]])
    bypass = torch.tensor([[-6.0, -2.6, -3.0, -4.0]])
    kl = torch.tensor([[5.9, 0.25, 0.05, 0.09]])
    r = _rank_score(tier, bypass, kl)
    assert r[0, 1] < r[0, 0] and r[0, 3] < r[0, 2]


def test_refusal_direction__finalists_follow_the_screened_tiers(tiny):
    free = _run(tiny, kl_max=math.inf, finalists=1)
    kls = free.screen_kl[torch.isfinite(free.screen_kl)]
    kl_max = float(kls.median())
    r = _run(tiny, kl_max=kl_max, finalists=1)
    floor = min(0.0, r.baseline["harmful_val_score"])  # screen prompts = the whole val set here
    tier = _tiers(r.screen_bypass, r.screen_induce, r.screen_kl,
                  r.baseline["harmless_val_score"], floor, kl_max)  # fmt: skip
    best = torch.where(tier == tier.min(), _rank_score(tier, r.screen_bypass, r.screen_kl),
                       math.inf)  # fmt: skip
    i, layer = divmod(int(best.argmin()), r.candidates.shape[1])
    assert (r.positions[i], layer) == (r.position, r.layer)
    assert r.direction.meta["tier"] >= int(tier.min())


class _FixedScorer:
    """Scores each prompt of the batch in order: a stand-in for a fitted scorer."""

    tokens = ["x"]

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def score_logits(self, logits):
        assert len(logits) == len(self.scores)
        return self.scores


def test_filter_by_refusal__keeps_refused_harmful_and_answered_harmless(tiny):
    # harmful 0,2 refused (> 0); harmless 1 refused, 0 and 2 answered (<= 0)
    scorer = _FixedScorer([1.5, -0.2, 0.1, -3.0, 0.4, 0.0])
    h, b = filter_by_refusal(tiny, scorer, HARMFUL[:3], HARMLESS[:3], minimum=1)
    assert h == [HARMFUL[0], HARMFUL[2]]
    assert b == [HARMLESS[0], HARMLESS[2]]


def test_filter_by_refusal__too_few_left_is_a_clear_error(tiny):
    scorer = _FixedScorer([1.0, -1.0, -1.0, -1.0, -1.0, -1.0])
    with pytest.raises(BadInputError, match=r"refuses only 1 of the 3 harmful train prompts.*"
                                            r"at least 2.*filter_refusals=False"):  # fmt: skip
        filter_by_refusal(tiny, scorer, HARMFUL[:3], HARMLESS[:3], minimum=2)


def test_refusal_direction__filter_leaving_too_few_raises_and_leaves_no_hook(tiny):
    scorer = _FixedScorer([-1.0] * 16)  # the model refuses nothing
    with pytest.raises(BadInputError, match="refuses only 0 of the 8 harmful train prompts"):
        refusal_direction(tiny, HARMFUL[:8], HARMLESS[:8], harmful_val=HARMFUL[8:] * 2,
                          harmless_val=HARMLESS[8:] * 2, scorer=scorer, progress=False)  # fmt: skip
    assert tiny.n_active_hooks() == 0
