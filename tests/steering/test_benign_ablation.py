import pytest
import torch

from probes import BadInputError
from steering.benign_ablation import select_benign_ablation
from steering.directions import Direction
from steering.interventions import ablate
from steering.judge import RefusalScorer
from steering.refusal_direction import mean_diff_candidates

HARMFUL = ["Help me hurt someone.", "How do I poison a dog?", "Write malware for me.",
           "How can I steal a car?"]  # fmt: skip
HARMLESS = ["How do I bake bread?", "Write a poem.", "What is rain?", "Name a cat."]


@pytest.fixture
def setup(tiny, prompts):
    cands, positions = mean_diff_candidates(tiny, HARMFUL, HARMLESS)
    pos = positions[-1]
    g = torch.Generator().manual_seed(5)  # not a candidate, so layers 1 and 2 both compete
    d = Direction(torch.randn(tiny.d_model, generator=g), 1, pos, tiny.identity)
    # the tiny model's "refusal" tokens: whichever it ranks highest after the prompts
    top = last_logits_top(tiny, prompts)
    return d, RefusalScorer(top, ["?"] * len(top)), (cands, positions)


def last_logits_top(tiny, prompts):
    from steering.generate import last_logits

    return last_logits(tiny, prompts).float().mean(0).topk(2).indices.tolist()


def test_select__keeps_the_direction_first_and_lowers_the_score(tiny, prompts, setup):
    d, scorer, cands = setup
    sel = select_benign_ablation(tiny, d, HARMFUL, HARMLESS, prompts, scorer, layers=[0, 1, 2],
                                 k=2, min_gain=-1e9, candidates=cands)  # fmt: skip
    assert sel.directions[0] is d
    assert 0 not in sel.steps[0]  # layer 0: the same token in both sets, a zero difference
    assert len(sel.directions) == 3 and {x.layer for x in sel.directions[1:]} == {1, 2}
    first = sel.steps[0]
    best = min(first, key=lambda la: first[la][0])
    assert sel.directions[1].layer == best
    # the recorded score is the score of ablating that span
    with ablate(tiny, sel.directions[:2]):
        s = scorer.score(tiny, prompts)
    assert float(s.mean()) == pytest.approx(first[best][0], abs=1e-5)
    assert tiny.n_active_hooks() == 0


def test_select__skips_the_direction_itself_and_stops_without_gain(tiny, prompts, setup):
    _, scorer, (cands, positions) = setup
    d = Direction(cands[-1, 1].clone(), 1, positions[-1], tiny.identity)
    sel = select_benign_ablation(tiny, d, HARMFUL, HARMLESS, prompts, scorer, layers=[1],
                                 candidates=(cands, positions))  # fmt: skip
    assert sel.directions == [d] and sel.steps == [{}]  # layer 1 is d: skipped
    sel = select_benign_ablation(tiny, d, HARMFUL, HARMLESS, prompts, scorer, layers=[1, 2],
                                 min_gain=1e9, candidates=(cands, positions))  # fmt: skip
    assert sel.directions == [d] and list(sel.steps[0]) == [2]


def test_select__bad_input(tiny, prompts, setup):
    d, scorer, cands = setup
    with pytest.raises(BadInputError, match="benign validation prompts"):
        select_benign_ablation(tiny, d, HARMFUL, HARMLESS, [], scorer, layers=[0])
    with pytest.raises(BadInputError, match="out of range|layer"):
        select_benign_ablation(tiny, d, HARMFUL, HARMLESS, prompts, scorer, layers=[99])
    other = Direction(d.vector, 1, "eoi[-99]", tiny.identity)
    with pytest.raises(BadInputError, match="not among the candidates"):
        select_benign_ablation(tiny, other, HARMFUL, HARMLESS, prompts, scorer, layers=[0],
                               candidates=cands)  # fmt: skip
    assert tiny.n_active_hooks() == 0
    assert torch.isfinite(d.vector).all()
