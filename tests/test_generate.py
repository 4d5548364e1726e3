"""Generation pieces against independent truth: scipy's KDE, hand-computed TV and similarities."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde

from clamp.generate.features import MHSAOutput
from clamp.generate.loop import GenerationConfig, cosine_lr, optimise_images
from clamp.generate.priors import (
    TVPrior,
    kde_entropy,
    patch_similarity,
    patch_similarity_entropy,
    total_variation,
    tv_scale,
)
from clamp.task import InputSpec


def test_kde_entropy_matches_scipy_and_trapezoid():
    values = np.array([0.1, 0.12, 0.3, 0.31, 0.33, 0.5, 0.72, 0.9])
    kde = gaussian_kde(values, bw_method=0.01 / values.std(ddof=1))
    t = np.linspace(values.min(), values.max(), 10)
    f = kde(t) + 1e-4  # PSAQ-ViT adds 1e-4 to the density before the log
    expected = -np.trapezoid(f * np.log(f), t)
    got = kde_entropy(torch.tensor(values, dtype=torch.float64)[None], bandwidth=0.01, points=10)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kde_entropy_uses_one_grid_for_the_whole_batch_and_adds_1e4():
    rows = [np.array([0.0, 0.01, 0.02]), np.array([0.5, 0.9, 0.95])]
    t = np.linspace(0.0, 0.95, 10)  # min and max over both rows, not per row
    expected = []
    for v in rows:
        f = gaussian_kde(v, bw_method=0.01 / v.std(ddof=1))(t) + 1e-4
        expected.append(-np.trapezoid(f * np.log(f), t))
    got = kde_entropy(torch.tensor(np.stack(rows)), bandwidth=0.01, points=10)
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-6)
    # far from every value the density is ~0: the 1e-4 keeps -p log p finite and positive
    assert math.isfinite(got.item())


def test_total_variation_of_a_hand_made_image():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    # right: (-1, -1), down: (-2, -2), anti-diagonal: (1), diagonal: (-3)
    assert total_variation(x).item() == pytest.approx(math.sqrt(2) + math.sqrt(8) + 1 + 3)


def test_tv_target_scales_with_the_square_root_of_pixels():
    assert tv_scale(32, 224, 224) == 1
    assert tv_scale(32, 32, 32) == pytest.approx(32 / 224)
    prior = TVPrior(target=(2500.0, 2500.0))
    assert prior.goal((32, 3, 32, 32), torch.Generator()) == pytest.approx(2500 * 32 / 224)
    literal = TVPrior(target=(2500.0, 2500.0), scale_to_input=False)
    assert literal.goal((32, 3, 32, 32), torch.Generator()) == 2500


def test_patch_similarity_averages_heads_before_the_cosine():
    # 3 patches, 2 heads of width 2; head means: (0.5, 0.5), (0, 1), (1, 0)
    tokens = torch.tensor([[[1.0, 0, 0, 1], [0, 1, 0, 1], [1, 0, 1, 0]]])
    sim = patch_similarity(MHSAOutput(tokens, tokens.view(1, 1, 3, 4), num_heads=2))
    r = 1 / math.sqrt(2)  # cosine per head, then the mean, would give 0.5 here
    expected = torch.tensor([[1.0, r, r], [r, 1.0, 0.0], [r, 0.0, 1.0]])
    assert sim.shape == (1, 3, 3)
    assert torch.allclose(sim[0], expected)


def test_swin_drops_each_windows_first_token_and_pools_an_images_windows():
    # one image, two windows of 3 tokens, one head: token 0 of each window is dropped
    windows = torch.tensor([[[9.0, 9], [1, 0], [0, 1]], [[9.0, 9], [1, 0], [1, 1]]])
    out = MHSAOutput(windows, torch.zeros(1, 2, 3, 2), num_heads=1, windowed=True)
    sim = patch_similarity(out)
    assert sim.shape == (2, 2, 2)
    assert torch.allclose(sim[0], torch.tensor([[1.0, 0], [0, 1]]))
    assert torch.allclose(sim[1], torch.tensor([[1.0, 1 / math.sqrt(2)], [1 / math.sqrt(2), 1]]))
    pooled = kde_entropy(sim.reshape(1, 8))  # both windows of the image in one estimate
    assert patch_similarity_entropy([out]).item() == pytest.approx(pooled.item())


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 500, 0.2, 100) for s in range(500)]
    assert lrs[0] == pytest.approx(0.002) and lrs[99] == pytest.approx(0.2)
    assert lrs[100] == pytest.approx(0.2) and lrs[-1] < 1e-4


def test_one_adam_state_across_rounds_and_one_roll_offset_for_both_axes(monkeypatch):
    spec = InputSpec((1, 4, 4), (0.5,), (1.0,))  # valid range [-0.5, 0.5] holds the target
    target = torch.linspace(-0.5, 0.5, 16).view(1, 1, 4, 4)
    config = GenerationConfig(rounds=((4, 0), (4, 0)), lr=0.1, flip=False, warmup=2)

    def loss(v):
        return (v - target).pow(2).sum()
    got = optimise_images(torch.zeros(1, 1, 4, 4), loss, spec, config, seed=0)
    # by hand: one Adam over 8 steps, the schedule restarting with the second round
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.9))
    for steps in (4, 4):
        for step in range(steps):
            opt.param_groups[0]["lr"] = cosine_lr(step, steps, 0.1, 2)
            opt.zero_grad()
            loss(x).backward()
            opt.step()
    assert torch.allclose(got, x.detach())
    seen = []
    real_roll = torch.roll
    monkeypatch.setattr(torch, "roll", lambda t, shifts, dims: seen.append(shifts) or real_roll(t, shifts, dims))
    optimise_images(torch.zeros(1, 1, 4, 4), loss, spec, GenerationConfig(rounds=((20, 224),)), seed=1)
    assert len(seen) == 20 and all(dy == dx for dy, dx in seen) and len({s[0] for s in seen}) > 1


def test_optimisation_clips_to_the_valid_pixel_range():
    spec = InputSpec((3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.zeros(2, 3, 8, 8)
    out = optimise_images(x, lambda v: -v.sum(), spec, GenerationConfig(rounds=((5, 1),), lr=1.0), seed=0)
    _, hi = spec.bounds()
    assert torch.allclose(out, hi.expand_as(out))  # pushed up, stopped at pixel value 1
