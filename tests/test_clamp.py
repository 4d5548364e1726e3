"""CLAMP-ViT: the contrastive losses by hand, the search's guarantees, mixed precision, ablations."""
import itertools
import math

import pytest
import torch

import clamp.method as clamp_method
from clamp.generate import contrastive
from clamp.generate.contrastive import (
    feature_contrastive_loss,
    feature_lo_maps,
    image_contrastive_loss,
    local_contrastive_loss,
    neighbours,
    patch_contrastive_loss,
    select_positives,
)
from clamp.method import ClampViT, block_groups, forward_order
from clamp.quant import (
    BitPlan,
    QuantConfig,
    calibrate,
    compression_report,
    is_weight,
    quantize_model,
    quantizers,
    recalibrate_activations,
)
from clamp.search.evolution import Candidate, Evolution, EvolutionConfig, best
from clamp.search.mixed import BitBudget
from tasks.classification import ClassificationTask

# a CLAMP-ViT small enough for a unit test; every stage still runs
DEIT = "micro_deit_patch4_32"
TINY = dict(n=8, rounds=((3, 15),), passes=1, cycles=2, population=4, tournament=2, refine_steps=1)


@pytest.fixture(scope="module")
def task():
    return ClassificationTask("micro_swin_patch2_window4_32", n_eval=300)


def neighbour_set(index, valid, i):
    return set(index[i][valid[i]].tolist())


def test_neighbourhood_on_a_4x4_grid():
    index, valid = neighbours(4, 4)
    assert neighbour_set(index, valid, 0) == {1, 4, 5}  # corner
    assert neighbour_set(index, valid, 5) == {0, 1, 2, 4, 6, 8, 9, 10}  # interior
    assert neighbour_set(index, valid, 1) == {0, 2, 4, 5, 6}  # edge
    assert all(i not in neighbour_set(index, valid, i) for i in range(16))


def test_top4_positives_among_the_neighbours():
    index, valid = neighbours(4, 4)
    sim = (index.float() / 100)[None]  # similarity to patch j grows with j
    top, ok = select_positives(sim, valid, k=4)
    assert set(index[5][top[0, 5]].tolist()) == {6, 8, 9, 10}
    assert set(index[0][top[0, 0][ok[0, 0]]].tolist()) == {1, 4, 5}  # only 3 candidates at a corner


def dense_reference(grid, tau=0.1, k=4, negatives="image"):
    """The loss written out over the full (P, P) matrix, as the paper states it."""
    b, h, w, c = grid.shape
    t = torch.nn.functional.normalize(grid.reshape(b, h * w, c), dim=-1)
    sim = t @ t.transpose(1, 2)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    eye = torch.eye(h * w, dtype=torch.bool)
    near = ((ys[:, None] - ys).abs() <= 1) & ((xs[:, None] - xs).abs() <= 1) & ~eye
    top = sim.detach().masked_fill(~near, float("-inf")).topk(k, -1).indices
    pos = torch.zeros_like(sim, dtype=torch.bool).scatter_(-1, top, True) & near
    numer = torch.logsumexp((sim / tau).masked_fill(~pos, float("-inf")), -1)
    candidates = near if negatives == "neighbourhood" else ~eye
    denom = torch.logsumexp((sim / tau).masked_fill(~candidates, float("-inf")), -1)
    return (denom - numer).mean()


@pytest.mark.parametrize("negatives", ["neighbourhood", "image"])
def test_loss_and_gradient_equal_the_dense_reference(negatives, monkeypatch):
    monkeypatch.setattr(contrastive, "CHUNK", 8)  # several chunks of anchors, the last one partial
    torch.manual_seed(0)
    grid = torch.randn(3, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    fast, ref = patch_contrastive_loss(grid, negatives=negatives), dense_reference(grid, negatives=negatives)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-10)
    (g_fast,), (g_ref,) = torch.autograd.grad(fast, grid), torch.autograd.grad(ref, grid)
    torch.testing.assert_close(g_fast, g_ref)


def test_identical_tokens_give_the_hand_computed_loss():
    grid = torch.ones(1, 4, 4, 8)  # every similarity is 1
    # image: 15 candidates, 3 positives at the 4 corners and 4 elsewhere
    expected = (4 * math.log(15 / 3) + 12 * math.log(15 / 4)) / 16
    assert patch_contrastive_loss(grid, tau=0.1, negatives="image").item() == pytest.approx(expected, rel=1e-5)
    # neighbourhood: corners 3 candidates (all positive), edges 5, interior 8, each with 4 positives
    expected = (4 * math.log(3 / 3) + 8 * math.log(5 / 4) + 4 * math.log(8 / 4)) / 16
    assert patch_contrastive_loss(grid, tau=0.1).item() == pytest.approx(expected, rel=1e-5)


def test_neighbourhood_form_on_a_hand_made_3x3_grid():
    # unit tokens at these angles: similarity cos(angle difference), worked out in plain Python
    angles = [0.0, 0.1, 0.2, 0.3, 0.0, 0.5, 0.6, 0.7, 0.8]
    grid = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64).reshape(1, 3, 3, 2)
    terms = []
    for i in range(9):
        y, x = divmod(i, 3)
        near = [j for j in range(9) if j != i and abs(j // 3 - y) <= 1 and abs(j % 3 - x) <= 1]
        sims = sorted((math.cos(angles[i] - angles[j]) for j in near), reverse=True)
        exps = [math.exp(s / 0.1) for s in sims]
        terms.append(math.log(sum(exps) / sum(exps[:4])))  # 4 most similar attract, the rest repel
    assert terms[0] == pytest.approx(0.0)  # a corner has 3 neighbours: all of them positives
    assert patch_contrastive_loss(grid, tau=0.1, k=4).item() == pytest.approx(sum(terms) / 9, rel=1e-9)


def saved_bytes(fn, *args) -> int:
    """Bytes autograd keeps for the backward pass of fn(*args)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total


def test_image_form_memory_stays_below_the_dense_matrix():
    grid = torch.randn(2, 64, 64, 16, requires_grad=True)
    dense_matrix = 2 * (64 * 64) ** 2 * 4  # one (B, P, P) float32 similarity matrix
    assert saved_bytes(dense_reference, grid) > dense_matrix
    assert saved_bytes(lambda g: patch_contrastive_loss(g, negatives="image"), grid) < dense_matrix / 8


def test_spatially_smooth_tokens_beat_shuffled_ones():
    torch.manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 3, 6), torch.linspace(0, 3, 6), indexing="ij")
    grid = torch.stack([torch.cos(ys), torch.sin(ys), torch.cos(xs), torch.sin(xs)], -1)[None]
    shuffled = grid.reshape(1, 36, 4)[:, torch.randperm(36)].reshape(1, 6, 6, 4)
    # the image form rewards smooth maps: neighbours close, far patches apart
    assert patch_contrastive_loss(grid, negatives="image").item() < \
        patch_contrastive_loss(shuffled, negatives="image").item()
    # the neighbourhood form rewards neighbourhoods that split into a similar and a dissimilar
    # part (edges, texture): a uniform map is its worst case, log(8 / 4) at interior patches
    uniform = torch.ones(1, 6, 6, 4)
    assert patch_contrastive_loss(grid).item() < patch_contrastive_loss(uniform).item()


def test_local_loss_is_minimal_for_identical_outputs():
    fp = torch.eye(9, dtype=torch.float64)[None]  # 9 orthonormal patch tokens
    # positive similarity 1, eight negatives at 0: log(1 + 8 e^-10)
    assert local_contrastive_loss(fp, fp, tau=0.1).item() == pytest.approx(math.log(1 + 8 * math.exp(-10)), rel=1e-4)
    shuffled = fp[:, torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8])]
    assert local_contrastive_loss(shuffled, fp).item() > 1.0


def test_feature_lo_pools_only_maps_above_max_side_and_says_so():
    gen = torch.Generator().manual_seed(0)
    fp = (torch.randn(2, 8, 64, 48, generator=gen), torch.randn(2, 8, 16, 16, generator=gen))
    q = tuple(f + 0.1 * torch.randn(f.shape, generator=gen) for f in fp)
    assert feature_lo_maps(fp, max_side=32) == "64x48->32x32 16x16"
    pooled = tuple(torch.nn.functional.adaptive_avg_pool2d(f, (32, 32)) for f in (fp[0], q[0]))
    by_hand = torch.stack([local_contrastive_loss(pooled[1].permute(0, 2, 3, 1), pooled[0].permute(0, 2, 3, 1)),
                           local_contrastive_loss(q[1].permute(0, 2, 3, 1), fp[1].permute(0, 2, 3, 1))]).mean()
    assert feature_contrastive_loss(fp, q, max_side=32).item() == pytest.approx(by_hand.item())
    assert feature_lo_maps(fp, max_side=64) == "64x48 16x16"


def test_search_keeps_its_best_and_never_ends_worse_than_its_start():
    target = torch.linspace(0.01, 0.05, 8)

    def fitness(c):
        return float(sum((s - target).pow(2).sum() for s in c.scales.values()))
    evo = Evolution(EvolutionConfig(), seed=0)
    start = Candidate({f"q{i}.weight": torch.full((8,), 0.03) for i in range(3)})
    population = evo.initial(start, fitness)
    assert len(population) == 15 and len({c.fitness for c in population}) == 1  # 15 copies of the start
    start_fitness = population[0].fitness
    bests = [best(population).fitness]
    for _ in range(300):
        evo.cycle(population, lambda name: 4, fitness)
        bests.append(best(population).fitness)
    assert all(b2 <= b1 for b1, b2 in itertools.pairwise(bests))
    assert bests[-1] < start_fitness
    assert len(population) == 15


@pytest.mark.parametrize("bits, r", [(4, 1e-3), (3, 1e-3), (8, 1e-4), (6, 1e-4)])
def test_mutation_moves_every_channel_within_evolq_bounds_and_stays_positive(bits, r):
    evo = Evolution(EvolutionConfig(), seed=1)
    scale = torch.cat([torch.full((500,), 0.02), torch.full((12,), 1e-5)])  # some scales smaller than r
    child = evo.mutate(Candidate({"w.weight": scale}), lambda name: bits).scales["w.weight"]
    step = child - scale
    assert (child > 0).all() and (step != 0).all()
    assert (step[:500].abs() <= r).all() and step[:500].abs().max() > 0.9 * r  # uniform over (-r, r)
    assert (child[500:] <= r + 1e-5).all()  # Evol-Q's abs() folds a negative scale back


def test_block_groups_cover_every_quantizer_once(task):
    qnet = quantize_model(task.build_model(), QuantConfig())
    groups = block_groups(qnet)
    assert len(groups) == 4
    names = [q.name for _, g in groups for q in g]
    assert sorted(names) == sorted(q.name for q in quantizers(qnet))
    assert "patch_embed.proj.weight" in {q.name for q in groups[0][1]}
    assert "head.fc.weight" in {q.name for q in groups[-1][1]}
    assert "layers.1.downsample.reduction.weight" in {q.name for q in groups[2][1]}


def test_forward_order_puts_the_embedding_sums_with_block_0():
    """In a reference-layout ViT the embedding quantizers are children of the root, registered after
    the head: in module order they join the last block; in forward order, block 0 (the issue's
    lead: the embeddings were searched with block 11)."""
    deit = ClassificationTask(DEIT, n_eval=8)
    qnet = calibrate(quantize_model(deit.build_model(), QuantConfig()), [deit.real_images(2, 0)])
    embed = {"embed", "pos_embed", "pos_sum"}
    by_modules, by_forward = block_groups(qnet), block_groups(qnet, forward_order(qnet, deit.real_images(1, 0)))
    assert embed <= {q.name for q in by_modules[-1][1]} and not embed & {q.name for q in by_modules[0][1]}
    assert embed <= {q.name for q in by_forward[0][1]}
    assert sorted(q.name for _, g in by_forward for q in g) == sorted(q.name for q in quantizers(qnet))
    assert "head.out" in {q.name for q in by_forward[-1][1]}  # after the last block either way


def test_recalibration_reobserves_activations_and_keeps_what_the_search_set():
    deit = ClassificationTask(DEIT, n_eval=8)
    model = deit.build_model()
    x1, x2 = deit.real_images(4, 0), deit.real_images(4, 1)
    qnet = calibrate(quantize_model(model, QuantConfig(BitPlan(4, 8))), [x1])
    weight = next(q for q in quantizers(qnet) if is_weight(q))
    act = next(q for q in quantizers(qnet) if not is_weight(q) and q.bits == 8)
    weight.set_scale(weight.scale * 1.1)
    searched = weight.scale.clone()
    act.set_mult(0.9)
    recalibrate_activations(qnet, [x2])
    fresh = {q.name: q for q in quantizers(calibrate(quantize_model(model, QuantConfig(BitPlan(4, 8))), [x2]))}
    for q in quantizers(qnet):
        if not is_weight(q) and q.active:
            assert torch.equal(q.scale, fresh[q.name].scale) and torch.equal(q.zero_point, fresh[q.name].zero_point)
    assert torch.equal(weight.scale, searched) and act.mult == 0.9 and act.active and weight.active
    _, report = ClampViT(**TINY, recalibrate=True).quantize(deit, model, QuantConfig(BitPlan(4, 8)), 0)
    assert report["refine_steps"] > 0


def test_unlabelled_fitness_images_are_generated_without_the_label_term(task, monkeypatch, image_steps):
    """fitness_images=unlabelled: the search runs on a second batch generated with no labels (and
    refines it with none), calibration stays on stage 1's; the TV target of the seed is the same."""
    seen = []
    generate = ClampViT.generate
    monkeypatch.setattr(ClampViT, "generate", lambda self, t, net, seed, labelled=True: (
        seen.append(labelled), generate(self, t, net, seed, labelled))[1])
    method = ClampViT(**TINY, fitness_images="unlabelled")
    _, report = method.quantize(task, task.build_model(), QuantConfig(BitPlan(4, 8)), 0)
    assert seen == [True, False] and report["fitness_images"] != report["images"]
    assert report["image_steps"] == image_steps[0] == 2 * 3 + report["refine_steps"]  # both batches count
    assert method._prior_inputs(task, 0, labelled=False)[0] is None
    assert method._prior_inputs(task, 0, labelled=False)[1] == method._prior_inputs(task, 0)[1]


def test_infonce_global_term_by_hand():
    """Two images, outputs already unit-norm: logits = cos / T; CE with the own image as positive, x 2T."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fp = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = 3.0
    cos = torch.tensor([[1.0, 0.6], [0.0, 0.8]])
    rows = [-(cos[i, i] / t) + torch.logsumexp(cos[i] / t, 0) for i in range(2)]
    assert image_contrastive_loss(q, fp, t).item() == pytest.approx(float(sum(rows) / 2 * 2 * t), rel=1e-6)
    assert image_contrastive_loss(fp.flip(0), fp, t) > image_contrastive_loss(fp, fp, t)  # swapped images: worse


def test_infonce_and_forward_groups_run(task):
    model = task.build_model()
    _, report = ClampViT(**TINY, global_loss="infonce", groups="forward").quantize(
        task, model, QuantConfig(BitPlan(4, 8)), 0)
    assert len(report["fitness_end"]) == 4 and all(math.isfinite(f) for f in report["fitness_end"])
    with pytest.raises(ValueError, match="unknown global_loss"):
        ClampViT(global_loss="mse")


def test_clamp_is_deterministic_under_a_seed(task):
    model = task.build_model()
    x = task.real_images(4, seed=0)
    outs = []
    for seed in (0, 0, 1):
        qmodel, _ = ClampViT(**TINY).quantize(task, model, QuantConfig(BitPlan(4, 8)), seed)
        with torch.no_grad():
            outs.append(qmodel(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_mixed_precision_never_exceeds_the_size_or_bops_of_uniform_w4a8(task):
    """budget=size+bops, the first rule: neither the size nor the layer BOPS of uniform W4/A8."""
    model = task.build_model()
    uniform = calibrate(quantize_model(model, QuantConfig(BitPlan(4, 8))), [task.real_images(4, 0)])
    target = compression_report(uniform)
    qmodel, report = ClampViT(**{**TINY, "passes": 2, "cycles": 4, "budget": "size+bops"}).quantize(
        task, model, QuantConfig(BitPlan(4, 8), mixed=True), seed=0)
    got = compression_report(qmodel)
    assert got["size_mb"] <= target["size_mb"] * (1 + 1e-9)
    assert got["gbops"] <= target["gbops"] * (1 + 1e-9)
    assert {q.bits for q in quantizers(qmodel)} <= set(range(2, 9))
    assert report["size_target_mb"] == pytest.approx(target["size_mb"], rel=1e-5)
    assert report["gbops_target"] == pytest.approx(target["gbops"], rel=1e-5)
    assert report["bits"].startswith("W")
    assert len(report["fitness_start"]) == len(report["fitness_end"]) == 4  # one per Swin block


def test_default_mixed_precision_keeps_the_bops_of_uniform_w4a8_with_the_matmuls(task):
    """The defaults are the paper's rule (#28): BOPS alone, q·kᵀ and attn·v counted; the size may rise."""
    model = task.build_model()
    uniform = calibrate(quantize_model(task.backbone(model), QuantConfig(BitPlan(4, 8), mixed=True)),
                        [task.real_images(4, 0)])
    target = BitBudget(uniform, "bops")
    qmodel, report = ClampViT(**{**TINY, "passes": 2, "cycles": 4}).quantize(
        task, model, QuantConfig(BitPlan(4, 8), mixed=True), seed=0)
    base = {q.name: q.bits for q in quantizers(uniform)}
    got = {q.name: q.bits for q in quantizers(qmodel)}
    assert report["budget"] == "bops" and set(got) == set(base)
    assert target.bops(got) <= target.target_bops * (1 + 1e-9)
    assert report["gbops_target"] == pytest.approx(target.target_bops / 1e9, rel=1e-5)
    free = {q.name for q in quantizers(uniform)} - target.cost_sites
    assert all(got[n] == base[n] for n in free)  # cost-free sites stay at the base bits


def test_refine_reuses_the_stage1_labels_and_tv_target(task, monkeypatch, image_steps):
    seen = []
    real_data_loss = ClampViT.data_loss

    def recording(self, task_, net, capture, labels, tv_goal):
        seen.append((labels.clone(), tv_goal))
        return real_data_loss(self, task_, net, capture, labels, tv_goal)
    monkeypatch.setattr(ClampViT, "data_loss", recording)
    _, report = ClampViT(**{**TINY, "rounds": ((2, 15),)}).quantize(
        task, task.build_model(), QuantConfig(BitPlan(4, 8)), seed=3)
    assert len(seen) == 1 + 4 * 2  # stage 1, then per block a refinement every cycles/2 = 1 cycle
    assert all(torch.equal(labels, seen[0][0]) and goal == seen[0][1] for labels, goal in seen)
    assert report["refine_steps"] == 8 * TINY["refine_steps"]
    assert report["image_steps"] == image_steps[0] == 2 + 8 * TINY["refine_steps"]


@pytest.mark.parametrize("base, options, silenced, appears", [
    ({}, {"search": False}, "Search.run", None),
    ({}, {"adaptation": False}, "ClampViT.refine", None),
    ({}, {"local_loss": False}, "local_contrastive_loss", None),
    ({"adaptation": False}, {"output_loss": False}, "output_loss", None),  # refinement uses L_O too
    ({}, {"data": "gaussian"}, "patch_contrastive_loss", None),
    ({}, {"data": "psaq"}, "patch_contrastive_loss", "patch_similarity_entropy"),
])
def test_every_ablation_flag_changes_what_runs(task, monkeypatch, base, options, silenced, appears):
    calls = {}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)
        return wrapped

    targets = {
        "Search.run": (clamp_method.Search, "run"),
        "ClampViT.refine": (clamp_method.ClampViT, "refine"),
        "local_contrastive_loss": (clamp_method, "local_contrastive_loss"),
        "output_loss": (task, "output_loss"),
        "patch_contrastive_loss": (clamp_method, "patch_contrastive_loss"),
        "patch_similarity_entropy": (clamp_method, "patch_similarity_entropy"),
    }
    for name, (owner, attr) in targets.items():
        monkeypatch.setattr(owner, attr, counting(name, getattr(owner, attr)))
    model = task.build_model()
    ClampViT(**TINY, **base).quantize(task, model, QuantConfig(BitPlan(4, 8)), seed=10)
    assert calls.get(silenced, 0) > 0
    calls.clear()
    ClampViT(**{**TINY, **base, **options}).quantize(task, model, QuantConfig(BitPlan(4, 8)), seed=10)
    assert calls.get(silenced, 0) == 0
    if appears:
        assert calls.get(appears, 0) > 0


def test_an_inadmissible_mixed_plan_is_infinitely_unfit(task):
    """The budget is a hard limit: a plan over the W4/A8 size or BOPS can never win, however low
    its loss (a finite penalty let a pretrained model's plan run 2.3% over the size)."""
    net = task.backbone(task.build_model())
    images = task.real_images(4, 0)
    qnet = calibrate(quantize_model(net, QuantConfig(BitPlan(4, 8), mixed=True)), [images])
    search = clamp_method.Search(ClampViT(**TINY), task, net, qnet, images, mixed=True, seed=0)
    last = len(search.groups) - 1
    start = search.start(search.groups[last][1])
    assert math.isfinite(search.fitness(last, start))
    wide = Candidate(start.scales, start.mults, {name: 8 for name in start.bits})
    assert search.fitness(last, wide) == math.inf


def test_a_stepped_bit_gene_moves_one_bit_within_the_choices():
    evo = Evolution(EvolutionConfig(bit_mutation=1.0, bit_move="step"), seed=0, mixed=True)
    parent = Candidate({}, bits={"a.out": 8, "b.out": 2, "c.out": 5})
    moves = {name: set() for name in parent.bits}
    for _ in range(50):
        for name, bits in evo.mutate(parent, parent.bits.__getitem__).bits.items():
            moves[name].add(bits)
    assert moves == {"a.out": {7}, "b.out": {3}, "c.out": {4, 6}}
    with pytest.raises(ValueError, match="unknown bit mutation"):
        EvolutionConfig(bit_move="jump")


def test_apart_children_move_one_bit_gene_or_the_scales_never_both():
    """mp_children=apart: a bit child moves exactly one bit gene by one bit, and only a weight whose
    bits moved leaves its scales (restarting at its min-max scale there); a scale child keeps the bits."""
    rescaled = torch.full((3,), 9.0)
    evo = Evolution(EvolutionConfig(bit_move="step", children="apart"), seed=0, mixed=True,
                    rescale=lambda name, bits: rescaled)
    scales = {"a.weight": torch.ones(3), "b.weight": torch.ones(3)}
    parent = Candidate(dict(scales), bits={"a.weight": 4, "b.weight": 4, "a.out": 8})
    kinds = set()
    for _ in range(60):
        child = evo.mutate(parent, parent.bits.__getitem__)
        moved = {n for n in parent.bits if child.bits[n] != parent.bits[n]}
        changed = {n for n in scales if not torch.equal(child.scales[n], parent.scales[n])}
        if moved:
            kinds.add("bits")
            (name,) = moved
            assert abs(child.bits[name] - parent.bits[name]) == 1
            assert changed == moved & set(scales) and all(torch.equal(child.scales[n], rescaled) for n in changed)
        else:
            kinds.add("scales")
            assert changed == set(scales)
    assert kinds == {"bits", "scales"}
    with pytest.raises(ValueError, match="unknown children"):
        EvolutionConfig(children="both")


@pytest.mark.parametrize("bits, r", [(4, 0.08), (8, 0.13)])
def test_a_relative_mutation_moves_each_channel_within_its_own_fraction(bits, r):
    evo = Evolution(EvolutionConfig(mutation="relative"), seed=1)
    scale = torch.cat([torch.full((500,), 0.02), torch.full((500,), 2e-5)])  # two orders of magnitude apart
    child = evo.mutate(Candidate({"w.weight": scale}), lambda name: bits).scales["w.weight"]
    ratio = (child - scale).abs() / scale
    assert (ratio <= r * (1 + 1e-6)).all() and ratio[:500].max() > 0.9 * r and ratio[500:].max() > 0.9 * r


def test_bops_budget_by_hand_on_micro_deit_with_the_matmuls():
    """W4/A8 micro DeiT (65 tokens of 96, 3 heads of 32, MLP 384, 4 blocks, 10 classes), per image:
    layers 64 x 96 x 48 (patch embedding) + 4 x 65 x (96 x 288 + 96 x 96 + 96 x 384 + 384 x 96) + 96 x 10
    MACs at 4 x 8 bits; per block q·kᵀ 3 x 65 x 65 x 32 MACs at 8 x 8 (both from qkv's output) and
    attn·v as many at 32 x 8 (the softmax is FP in the reference layout)."""
    from tasks.classification import ClassificationTask
    net = ClassificationTask(DEIT, n_eval=100).build_model()
    qnet = calibrate(quantize_model(net, QuantConfig(BitPlan(4, 8))), [torch.randn(2, 3, 32, 32)])
    layers = 64 * 96 * 48 + 4 * 65 * (96 * 288 + 96 * 96 + 96 * 384 + 384 * 96) + 96 * 10
    matmuls = 4 * 3 * 65 * 65 * 32 * (8 * 8 + 32 * 8)
    assert BitBudget(qnet, "bops").target_bops == layers * 4 * 8 + matmuls
    assert BitBudget(qnet).target_bops == layers * 4 * 8  # size+bops: the layers only
    bits = {q.name: q.bits for q in quantizers(qnet)}
    budget = BitBudget(qnet, "bops")
    assert budget.admissible({**bits, "blocks.0.attn.qkv.weight": 5, "blocks.0.attn.qkv.out": 6})
    assert not budget.admissible({**bits, "blocks.0.attn.qkv.weight": 5})  # a rise must be paid for
    assert not BitBudget(qnet).admissible({**bits, "blocks.0.attn.qkv.weight": 5, "blocks.0.attn.qkv.out": 6})


def test_cost_free_sites_are_never_bit_genes(task):
    """mp_genes=cost: only the weights and the activations that feed a quantized layer or (bops) a
    matmul carry bit genes; residual sums, scores, LayerNorm-free outputs and logits stay at the base bits."""
    net = task.backbone(task.build_model())
    images = task.real_images(4, 0)
    qnet = calibrate(quantize_model(net, QuantConfig(BitPlan(4, 8), mixed=True)), [images])
    search = clamp_method.Search(ClampViT(**TINY, mp_genes="cost", budget="bops", bit_move="step"), task, net, qnet,
                                 images, mixed=True, seed=0)
    genes = {name for _, group in search.groups for name in search.start(group).bits}
    assert genes == search.budget.cost_sites
    free = {q.name for q in quantizers(qnet)} - genes
    assert all(n.rsplit(".", 1)[-1] in ("res1", "res2") for n in free if ".res" in n)
    assert {n.rsplit(".", 1)[-1] for n in free} >= {"res1", "res2", "scores", "scores_bias", "table"}
    assert "head.fc.out" in free and "head.fc.input" in genes  # the logits cost nothing; the pooled features do
    # qkv.out feeds q·kᵀ and attn·v; norm1.out feeds qkv through the window partition (found before qkv runs)
    assert {"layers.0.blocks.0.attn.qkv.out", "layers.0.blocks.0.norm1.out"} <= genes


def test_rank_correlation_hand_values():
    from clamp.search.alignment import rank_correlation
    assert rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6 * 2 / (3 * 8)
    assert rank_correlation([1, 2], [1, 2]) is None and rank_correlation([1, 2, 3], [5, 5, 5]) is None


def test_the_alignment_diagnostic_scores_every_child_and_changes_no_decision(task):
    """Held-out loss on real training images after each evaluation: one (fitness, held-out)
    change per child; the quantized model is bit for bit the one the search gives without it."""
    model = task.build_model()
    held_images = task.real_images(4, seed=99)
    with torch.no_grad():
        fp_out = model(held_images)
    calls = []

    def held_out(qnet):
        calls.append(1)
        with torch.no_grad():
            return float(task.output_loss(fp_out, qnet(held_images)))
    x = task.real_images(4, seed=0)
    outs, reports = [], []
    for diagnostic in (None, held_out):
        method = ClampViT(**{**TINY, "cycles": 4})
        method.held_out = diagnostic
        qmodel, report = method.quantize(task, model, QuantConfig(BitPlan(4, 8)), seed=0)
        with torch.no_grad():
            outs.append(qmodel(x))
        reports.append(report)
    assert torch.equal(outs[0], outs[1]) and "alignment" not in reports[0]
    children = reports[1]["alignment_children"]
    assert len(children) == 4 * 4  # 4 blocks x 4 cycles, one pass
    assert -1 <= reports[1]["alignment"] <= 1 and calls
