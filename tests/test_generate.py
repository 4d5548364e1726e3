"""Generation pieces against independent truth: scipy's KDE, hand-computed TV and similarities."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde

from clamp.generate.features import MHSAOutput
from clamp.generate.loop import GenerationConfig, cosine_lr, optimise_images
from clamp.generate.priors import TVPrior, kde_entropy, patch_similarity, total_variation, tv_scale
from clamp.task import InputSpec


def test_kde_entropy_matches_scipy_and_trapezoid():
    values = np.array([0.1, 0.12, 0.3, 0.31, 0.33, 0.5, 0.72, 0.9])
    kde = gaussian_kde(values, bw_method=0.01 / values.std(ddof=1))
    t = np.linspace(values.min(), values.max(), 10)
    f = kde(t)
    expected = -np.trapezoid(f * np.log(f), t)
    got = kde_entropy(torch.tensor(values, dtype=torch.float64)[None], bandwidth=0.01, points=10)
    assert got.item() == pytest.approx(expected, rel=1e-6)


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


def test_patch_similarity_on_a_toy_attention_output():
    # 3 patches, 2 heads of width 2
    tokens = torch.tensor([[[1.0, 0, 0, 1], [0, 1, 0, 1], [1, 0, 1, 0]]])
    sim = patch_similarity(MHSAOutput(tokens, tokens.view(1, 1, 3, 4), num_heads=2))
    expected = torch.tensor([[1.0, 0.5, 0.5], [0.5, 1.0, 0.0], [0.5, 0.0, 1.0]])
    assert sim.shape == (1, 3, 3)
    assert torch.allclose(sim[0], expected)


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 500, 0.2, 100) for s in range(500)]
    assert lrs[0] == pytest.approx(0.002) and lrs[99] == pytest.approx(0.2)
    assert lrs[100] == pytest.approx(0.2) and lrs[-1] < 1e-4


def test_optimisation_clips_to_the_valid_pixel_range():
    spec = InputSpec((3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.zeros(2, 3, 8, 8)
    out = optimise_images(x, lambda v: -v.sum(), spec, GenerationConfig(rounds=((5, 1),), lr=1.0), seed=0)
    _, hi = spec.bounds()
    assert torch.allclose(out, hi.expand_as(out))  # pushed up, stopped at pixel value 1
