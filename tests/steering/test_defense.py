import pytest
import torch

from probes import BadInputError, record
from steering.defense import GatedRefusal
from steering.directions import Direction
from steering.generate import generate
from steering.interventions import ablate
from tests.probes.test_monitor import make_probe


@pytest.fixture
def direction(tiny):
    g = torch.Generator().manual_seed(3)
    return Direction(torch.randn(tiny.d_model, generator=g) * 8, 1, "eoi[-1]", tiny.identity)


def _threshold_between(tiny, probe, prompts):
    s = probe.score(tiny, prompts).sort().values
    return float((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)


@pytest.mark.parametrize("mode", ["steer", "calibrate", "block"])
def test_defense__mixed_batch_equals_alone(tiny, prompts, direction, mode):
    probe = make_probe(tiny, layer=0)
    t = _threshold_between(tiny, probe, prompts)
    d = GatedRefusal(tiny, probe, direction, mode=mode, threshold=t, recheck=False)
    batched = d.generate(prompts, max_new_tokens=6)
    fired = [r["fired"] for r in d.report()]
    assert 0 < sum(fired) < len(prompts)
    for i, p in enumerate(prompts):
        alone = d.generate([p], max_new_tokens=6)
        assert alone[0] == batched[i]
        assert d.report()[0]["fired"] == fired[i]
    assert tiny.n_active_hooks() == 0


def test_defense__block_replaces_gated_answers(tiny, prompts, direction):
    probe = make_probe(tiny, layer=2)
    t = _threshold_between(tiny, probe, prompts)
    d = GatedRefusal(tiny, probe, mode="block", threshold=t)
    outs = d.generate(prompts, max_new_tokens=5)
    for o, r in zip(outs, d.report()):
        assert (o == d.refusal_text) == r["fired"]


def test_defense__block_with_a_direction_is_two_sided(tiny, prompts, direction):
    """Block with a direction also ablates it on confidently benign examples."""
    probe = make_probe(tiny, layer=0)
    t = _threshold_between(tiny, probe, prompts)
    # a direction the residual stream really has a component along, so ablating it matters
    acts = record(tiny, prompts, sites="resid_pre", layers=[1], positions="last")
    direction = Direction(acts.layer("resid_pre", 1).float().mean(0), 1, "last", tiny.identity)
    one = GatedRefusal(tiny, probe, mode="block", threshold=t, recheck=False)
    two = GatedRefusal(tiny, probe, direction, mode="block", threshold=t, recheck=False)
    outs1, outs2 = one.generate(prompts, max_new_tokens=6), two.generate(prompts, max_new_tokens=6)
    assert two.ablate_layers == list(range(1, tiny.n_layers))  # after the probe's layer 0
    with ablate(tiny, direction, layers=two.ablate_layers):
        ablated = generate(tiny, prompts, max_new_tokens=6)
    for o1, o2, a, r1, r2 in zip(outs1, outs2, ablated, one.report(), two.report()):
        assert r1["fired"] == r2["fired"] and not r1["ablated"]
        if r2["fired"]:
            assert o1 == o2 == two.refusal_text and not r2["ablated"]
        else:
            assert r2["ablated"] and o2 == a
    assert any(o1 != o2 for o1, o2 in zip(outs1, outs2))  # the ablation changed something
    assert tiny.n_active_hooks() == 0


@pytest.mark.parametrize("mode", ["steer", "calibrate", "block"])
def test_defense__gate_set_inside_the_prompt_forward_equals_a_pre_pass(
    tiny, prompts, direction, mode, monkeypatch
):
    """With every intervention after the probe's layer no pre-pass runs, same outputs."""
    probe = make_probe(tiny, layer=0)  # the direction adds at layer 1
    t = _threshold_between(tiny, probe, prompts)
    d = GatedRefusal(tiny, probe, direction, mode=mode, threshold=t, coeff=4.0)
    assert not d._needs_prefill(probe.layer)
    calls = []
    monkeypatch.setattr(d, "_prefill", lambda *a: calls.append(1) or GatedRefusal._prefill(d, *a))
    one_pass = d.generate(prompts, max_new_tokens=6)
    rep = d.report()
    assert not calls
    monkeypatch.setattr(d, "_needs_prefill", lambda layer: True)
    assert d.generate(prompts, max_new_tokens=6) == one_pass and calls
    assert d.report() == rep and 0 < sum(r["fired_at"] == 0 for r in rep) < len(prompts)
    assert tiny.n_active_hooks() == 0


def test_defense__steer_changes_only_gated_examples(tiny, prompts, direction):
    probe = make_probe(tiny, layer=0)
    t = _threshold_between(tiny, probe, prompts)
    plain = generate(tiny, prompts, max_new_tokens=6)
    d = GatedRefusal(tiny, probe, direction, mode="steer", threshold=t, coeff=4.0, recheck=False)
    outs = d.generate(prompts, max_new_tokens=6)
    for o, p, r in zip(outs, plain, d.report()):
        if not r["fired"]:
            assert o == p


def test_defense__recheck_can_fire_mid_generation(tiny, prompts, direction):
    probe = make_probe(tiny, layer=1)
    d = GatedRefusal(tiny, probe, mode="block", threshold=float("inf") if False else 0.0)
    d.threshold = float(probe.score(tiny, prompts).max()) + 1e-3  # nothing fires at the prompt
    d.generate(prompts, max_new_tokens=12)
    rep = d.report()
    assert all(r["fired_at"] != 0 for r in rep)
    for r in rep:
        assert r["fired"] == (r["max_score"] > d.threshold)


def test_defense__bad_input(tiny, direction):
    probe = make_probe(tiny)
    with pytest.raises(BadInputError, match="unknown mode"):
        GatedRefusal(tiny, probe, direction, mode="sometimes")
    with pytest.raises(BadInputError, match="needs a refusal direction"):
        GatedRefusal(tiny, probe, mode="steer")
    other = Direction(direction.vector, 1, "last", {**tiny.identity, "digest": "e" * 64})
    with pytest.raises(BadInputError, match="made for model"):
        GatedRefusal(tiny, probe, other, mode="steer")
    probe.threshold = None
    with pytest.raises(BadInputError, match="threshold"):
        GatedRefusal(tiny, probe, direction)
    assert tiny.n_active_hooks() == 0


# The tiny random model decodes the same token after every prompt, so token-level
# scores barely differ between prompts: the re-check tests use a real small model.
REAL_PROMPTS = [
    "How do I bake bread?", "Write a haiku about rain.", "What is the capital of Peru?",
    "List three uses of vinegar.", "Explain what a hash map is.", "Suggest a name for a cat.",
]  # fmt: skip


@pytest.mark.slow
def test_defense__calibrate_recheck_bounds_token_level_firing(smollm):
    probe = make_probe(smollm, layer=20)
    top = float(probe.score(smollm, REAL_PROMPTS).max()) + 1e-3  # nothing fires at the prompt
    d = GatedRefusal(smollm, probe, mode="block", threshold=top)
    t = d.calibrate_recheck(REAL_PROMPTS, fpr=0.01, max_new_tokens=10)
    top_benign = max(d.recheck_calibration)  # at 1% FPR of 5 prompts: their maximum
    assert d.recheck_threshold == t and d.threshold == top
    assert top_benign < t <= top_benign + 1e-5 * max(1.0, abs(top_benign))
    assert len(set(d.recheck_calibration)) >= 3  # a real spread of maxima
    d.generate(REAL_PROMPTS, max_new_tokens=10)  # block mode: the same greedy generations
    assert not any(r["fired"] for r in d.report())
    m = sorted(set(d.recheck_calibration))
    d.recheck_threshold = (m[-2] + m[-3]) / 2  # between benign maxima
    expected = [x > d.recheck_threshold for x in d.recheck_calibration]
    d.generate(REAL_PROMPTS, max_new_tokens=10)
    rep = d.report()
    assert [r["fired"] for r in rep] == expected and 2 <= sum(expected) < len(expected)
    assert all(r["fired_at"] not in (None, 0) for r in rep if r["fired"])
    with pytest.raises(BadInputError, match="at least one benign prompt"):
        d.calibrate_recheck([])
    assert smollm.n_active_hooks() == 0


@pytest.mark.slow
def test_defense__recheck_mixed_batch_equals_alone(smollm):
    probe = make_probe(smollm, layer=20)
    top = float(probe.score(smollm, REAL_PROMPTS).max()) + 1e-3
    d = GatedRefusal(smollm, probe, mode="block", threshold=top)
    d.calibrate_recheck(REAL_PROMPTS, fpr=0.5, max_new_tokens=10)
    m = sorted(set(d.recheck_calibration))
    d.recheck_threshold = (m[-2] + m[-3]) / 2  # away from any maximum
    batched = d.generate(REAL_PROMPTS, max_new_tokens=10)
    fired = [r["fired_at"] for r in d.report()]
    assert any(f is not None for f in fired) and not all(f is not None for f in fired)
    for i, p in enumerate(REAL_PROMPTS):
        assert d.generate([p], max_new_tokens=10)[0] == batched[i]
        assert d.report()[0]["fired_at"] == fired[i]


def test_defense__mean_position_probe_gates_like_offline_scores(tiny, prompts):
    probe = make_probe(tiny, layer=1, position="mean")
    t = _threshold_between(tiny, probe, prompts)
    d = GatedRefusal(tiny, probe, mode="block", threshold=t, recheck=False)
    outs = d.generate(prompts, max_new_tokens=4)
    fired = (probe.score(tiny, prompts) > t).tolist()
    assert [r["fired"] for r in d.report()] == fired and 0 < sum(fired) < len(fired)
    assert [o == d.refusal_text for o in outs] == fired
    assert tiny.n_active_hooks() == 0


def test_defense__ablate_from_all_runs_a_pre_pass_and_ablates_every_layer(tiny, prompts):
    probe = make_probe(tiny, layer=0)
    acts = record(tiny, prompts, sites="resid_pre", layers=[2], positions="last")
    direction = Direction(acts.layer("resid_pre", 2).float().mean(0), 2, "last", tiny.identity)
    t = _threshold_between(tiny, probe, prompts)
    auto = GatedRefusal(tiny, probe, direction, mode="calibrate", threshold=t, recheck=False)
    full = GatedRefusal(tiny, probe, direction, mode="calibrate", threshold=t, recheck=False,
                        ablate_from="all")  # fmt: skip
    assert auto.ablate_layers == [1, 2] and not auto._needs_prefill(0)
    assert full.ablate_layers == [0, 1, 2] and full._needs_prefill(0)
    outs = full.generate(prompts, max_new_tokens=6)
    benign = [p for p, r in zip(prompts, full.report()) if r["ablated"]]
    assert benign
    with ablate(tiny, direction):
        assert generate(tiny, benign, max_new_tokens=6) == [
            o for o, r in zip(outs, full.report()) if r["ablated"]
        ]
    with pytest.raises(BadInputError, match="ablate_from"):
        GatedRefusal(tiny, probe, direction, mode="calibrate", threshold=t, ablate_from="late")
    last = make_probe(tiny, layer=tiny.n_layers - 1)
    with pytest.raises(BadInputError, match="nothing after it"):
        GatedRefusal(tiny, last, direction, mode="calibrate", threshold=0.0, ablate_from="probe")
    assert tiny.n_active_hooks() == 0


def test_defense__ablate_directions_ablate_their_span_on_benign_examples(tiny, prompts):
    probe = make_probe(tiny, layer=0)
    t = _threshold_between(tiny, probe, prompts)
    acts = record(tiny, prompts, sites="resid_pre", layers=[1, 2], positions="last")
    d1 = Direction(acts.layer("resid_pre", 1).float().mean(0), 1, "last", tiny.identity)
    d2 = Direction(acts.layer("resid_pre", 2).float().std(0), 2, "last", tiny.identity)
    gate = GatedRefusal(tiny, probe, d1, mode="block", threshold=t, recheck=False,
                        ablate_directions=[d1, d2])  # fmt: skip
    outs = gate.generate(prompts, max_new_tokens=6)
    with ablate(tiny, [d1, d2], layers=gate.ablate_layers):
        ablated = generate(tiny, prompts, max_new_tokens=6)
    only = GatedRefusal(tiny, probe, d1, mode="block", threshold=t, recheck=False)
    outs1 = only.generate(prompts, max_new_tokens=6)
    for o, a, r in zip(outs, ablated, gate.report()):
        assert o == (gate.refusal_text if r["fired"] else a)
        assert r["ablated"] == (not r["fired"])
    assert outs != outs1  # the second direction changed some benign answer
    # block without a direction but with ablate_directions is two-sided too
    no_dir = GatedRefusal(tiny, probe, mode="block", threshold=t, recheck=False,
                          ablate_directions=[d1, d2])  # fmt: skip
    assert no_dir.generate(prompts, max_new_tokens=6) == outs
    assert tiny.n_active_hooks() == 0


def test_defense__bad_ablate_directions(tiny, direction):
    probe = make_probe(tiny)
    with pytest.raises(BadInputError, match="ablate_directions is empty"):
        GatedRefusal(tiny, probe, direction, mode="block", ablate_directions=[])
    with pytest.raises(BadInputError, match="must hold Directions"):
        GatedRefusal(tiny, probe, direction, mode="block", ablate_directions=[direction.vector])
    twice = Direction(direction.vector * 2, 2, "last", tiny.identity)
    with pytest.raises(BadInputError, match="span"):
        GatedRefusal(tiny, probe, direction, mode="block", ablate_directions=[direction, twice])
    other = Direction(direction.vector, 1, "last", {**tiny.identity, "digest": "e" * 64})
    with pytest.raises(BadInputError, match="made for model"):
        GatedRefusal(tiny, probe, direction, mode="block", ablate_directions=[other])
    assert tiny.n_active_hooks() == 0


@pytest.mark.parametrize("mode", ["steer", "calibrate", "block"])
def test_defense__two_probes_gate_as_an_or_and_batch_equals_alone(tiny, prompts, direction, mode):
    a = make_probe(tiny, layer=0, seed=0)
    a.threshold = _threshold_between(tiny, a, prompts)

    below_a = a.score(tiny, prompts) <= a.threshold

    def cut(p):  # (gap, threshold): fire on the best-scoring prompt a does not fire on
        sc = p.score(tiny, prompts)
        m = float(sc[below_a].max())
        lower = sc[sc < m]
        nxt = float(lower.max()) if len(lower) else m - 1.0
        return m - nxt, (m + nxt) / 2

    b = max((make_probe(tiny, layer=0, seed=s) for s in range(1, 12)), key=lambda p: cut(p)[0])
    b.threshold = cut(b)[1]
    sa, sb = a.score(tiny, prompts), b.score(tiny, prompts)
    d = GatedRefusal(tiny, {"intent": a, "jailbreak": b}, direction, mode=mode, recheck=False)
    outs = d.generate(prompts, max_new_tokens=6)
    rep = d.report()
    for r, x, y in zip(rep, sa.tolist(), sb.tolist()):
        assert min(abs(x - a.threshold), abs(y - b.threshold)) > 1e-3  # no ties
        assert r["fired"] == (x > a.threshold or y > b.threshold)
        assert r["fired_by"] == [n for n, v, t in (("intent", x, a.threshold),
                                                   ("jailbreak", y, b.threshold)) if v > t]  # fmt: skip
        assert r["ablated"] == (mode != "steer" and not r["fired"])
        assert r["prompt_score"] == pytest.approx(x, abs=1e-4)  # the primary's score
    only_b = [r for r in rep if r["fired_by"] == ["jailbreak"]]
    assert only_b, "the second probe should add a gated example"
    for i, p in enumerate(prompts):
        assert d.generate([p], max_new_tokens=6)[0] == outs[i]
    assert tiny.n_active_hooks() == 0


def test_defense__a_deeper_second_probe_moves_the_ablation_after_it(tiny, prompts, direction):
    a, b = make_probe(tiny, layer=0), make_probe(tiny, layer=1, seed=2)
    late = Direction(direction.vector, 2, "last", tiny.identity)
    d = GatedRefusal(tiny, [a, b], late, mode="calibrate", threshold=0.0)
    assert d.ablate_layers == [2]  # after the deeper probe's layer 1
    assert list(d.probes) == ["probe", "probe1"]


def test_defense__bad_probe_lists(tiny, direction):
    a = make_probe(tiny)
    with pytest.raises(BadInputError, match="no probe"):
        GatedRefusal(tiny, [], direction)
    with pytest.raises(BadInputError, match="'probe1' must be a Probe"):
        GatedRefusal(tiny, [a, "not a probe"], direction)
    b = make_probe(tiny, seed=3)
    b.threshold = None
    with pytest.raises(BadInputError, match="'probe1' has no finite threshold"):
        GatedRefusal(tiny, [a, b], direction)
    c = make_probe(tiny, seed=5)
    c.model_identity = {**tiny.identity, "digest": "f" * 64}
    with pytest.raises(BadInputError, match="model"):
        GatedRefusal(tiny, [a, c], direction)
    assert tiny.n_active_hooks() == 0


def test_defense__two_sided_recheck_is_calibrated_on_the_benign_path(tiny, prompts):
    """A two-sided gate calibrates on answers generated with its ablation on."""
    probe = make_probe(tiny, layer=0)
    acts = record(tiny, prompts, sites="resid_pre", layers=[1], positions="last")
    d = Direction(acts.layer("resid_pre", 1).float().mean(0) * 4, 1, "last", tiny.identity)
    two = GatedRefusal(tiny, probe, d, mode="block", threshold=0.0)
    plain = GatedRefusal(tiny, probe, mode="block", threshold=0.0)
    t_two = two.calibrate_recheck(prompts, max_new_tokens=6)
    t_plain = plain.calibrate_recheck(prompts, max_new_tokens=6)
    with ablate(tiny, d, layers=two.ablate_layers):
        t_inside = GatedRefusal(tiny, probe, mode="block", threshold=0.0).calibrate_recheck(
            prompts, max_new_tokens=6
        )
    assert t_two == t_inside and t_two != t_plain
    assert tiny.n_active_hooks() == 0
