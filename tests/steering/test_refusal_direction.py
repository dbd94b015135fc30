import math

import torch

from steering.judge import RefusalScorer
from steering.refusal_direction import refusal_direction

HARMFUL = [f"Tell me how to hurt person number {i} without being caught." for i in range(10)]
HARMLESS = [f"Give me a recipe idea number {i} for a quick dinner." for i in range(10)]


def _run(tiny, **kw):
    scorer = RefusalScorer([5, 7], ["a", "b"])
    return refusal_direction(tiny, HARMFUL[:8], HARMLESS[:8], harmful_val=HARMFUL[8:] * 2,
                             harmless_val=HARMLESS[8:] * 2, scorer=scorer, screen=2,
                             progress=False, **kw)  # fmt: skip


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


def test_refusal_direction__finalists_respect_the_screened_kl_filter(tiny):
    free = _run(tiny, kl_max=math.inf, finalists=1)
    kls = free.screen_kl[torch.isfinite(free.screen_kl)]
    kl_max = float(kls.median())
    r = _run(tiny, kl_max=kl_max, finalists=1)
    ok = (r.screen_kl <= kl_max) & (r.screen_induce > min(0.0, r.baseline["harmful_val_score"]))
    assert ok.any()  # the case under test: some candidates pass both screened filters
    best = torch.where(ok, r.screen_bypass, torch.full_like(r.screen_bypass, math.inf))
    i, layer = divmod(int(best.argmin()), r.candidates.shape[1])
    assert (r.positions[i], layer) == (r.position, r.layer)
    assert r.screen_kl[i, layer] <= kl_max
