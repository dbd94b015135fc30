import torch

from probes import load_model
from steering.directions import Direction
from steering.generate import last_logits
from steering.interventions import ablate
from steering.orthogonalize import hook_vs_weights_gap, orthogonalize


def test_orthogonalize__matches_hook_ablation_and_reloads(tiny, prompts, tmp_path):
    d = Direction(torch.randn(64) * 2, 1, "last", tiny.identity)
    before = last_logits(tiny, prompts)
    with ablate(tiny, d):
        hooked = last_logits(tiny, prompts)
    edited = orthogonalize(tiny, d)
    assert torch.equal(before, last_logits(tiny, prompts))  # original untouched
    path = edited.save_pretrained(tmp_path / "ortho")
    reloaded = load_model(path, device="cpu", dtype="float32")
    baked = last_logits(reloaded, prompts)
    assert (baked - hooked).abs().max() <= 1e-3
    assert (baked - before).abs().max() > 1e-3


def test_hook_vs_weights_gap__small_for_the_real_edit_large_for_another(tiny, prompts):
    g = torch.Generator().manual_seed(5)
    d = Direction(torch.randn(tiny.d_model, generator=g), 1, "last", tiny.identity)
    assert hook_vs_weights_gap(tiny, d, prompts) <= 1e-3
    with ablate(tiny, Direction(torch.randn(tiny.d_model, generator=g), 1, "last", tiny.identity)):
        assert hook_vs_weights_gap(tiny, d, prompts) > 1e-3  # hooks ablate a second direction
    assert tiny.n_active_hooks() == 0
