"""CLAMP-ViT (ECCV 2024): contrastive data-free learning for adaptive post-training quantization.

Stage 1 generates synthetic images with a patch-level contrastive loss on every block's MHSA
output. Stage 2 starts from min-max calibration on them and searches, block by block (last to
first, as Evol-Q), the block's quantization parameters with Evol-Q's evolutionary algorithm
(clamp/search/evolution.py: per-output-channel weight scales; bit-widths too in mixed precision)
whose fitness is a local patch-contrastive loss on the block output plus an output loss.
Cyclic adaptation: P passes over the blocks with C cycles each; every C/2 cycles the images are
refined toward FP/quantized disagreement, with the labels and TV target of stage 1.

Choices the paper does not pin down are options (defaults in ../shared/DESIGN.md section 5):
the generation schedule (``rounds``) and TV prior follow PSAQ-ViT (|TV(x) - v| with a target
scaled to the input); the refinement runs ``refine_steps`` Adam steps at ``refine_lr``;
quantizers outside the blocks (patch embedding, Swin patch merging, head) are searched with the
next block (the last block for the head); ``act_genes`` adds the block's activation scales as
multiplicative genes; ``block_order`` last_first (Evol-Q) or first_last; ``groups`` modules or forward (which block
the quantizers outside the blocks join); ``global_loss`` the fitness's output term, the task's
(KL of the logits; L_O on dense tasks) or Evol-Q's InfoNCE across images (``global_tau``; the
refinement keeps the task's); ``recalibrate`` re-observes the activation ranges on the refined
images after each refinement (weight scales, bits and multipliers kept); ``fitness_images``
stage1 or unlabelled (the search and its refinement on a second batch generated without the
random-label term, calibration on stage 1's: on CE-driven images the FP model is near certain and
the KL mostly measures -log q(label)); ``mutation`` absolute
(Evol-Q's radii) or relative (to each channel's scale). Mixed precision: ``bit_move`` (a bit gene
redrawn from ``bit_choices``, or one bit up or down), ``mp_children`` (bits and scales mutated in one
child, or apart: a bit child moves one bit gene), ``mp_genes`` (every quantizer, or only the
sites the budget counts) and ``budget`` (size and layer BOPS of uniform Wx/Ay, or BOPS alone with
the attention matmuls: clamp/search/mixed.py). Ablations: ``data`` (contrastive / psaq /
gaussian), ``search``, ``adaptation``, ``local_loss``, ``output_loss``. The defaults of
``mutation``, ``recalibrate`` and the four mixed-precision options were chosen by measurement
on the micro and pretrained tiers, 3 seeds (#28, docs/findings.md); the other stage-2 options
measured no better and stay off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clamp.generate.cache import cached_images
from clamp.generate.contrastive import (
    NEGATIVES,
    feature_lo_maps,
    image_contrastive_loss,
    local_contrastive_loss,
    patch_contrastive_loss,
)
from clamp.generate.features import MHSACapture, patch_tokens, transformer_blocks
from clamp.generate.loop import GenerationConfig, image_stats, noise, optimise_images
from clamp.generate.priors import TVPrior, patch_similarity_entropy
from clamp.quant import (
    QuantConfig,
    Quantizer,
    calibrate,
    compression_report,
    is_weight,
    quant_layers,
    quantize_model,
    quantizers,
    recalibrate_activations,
)
from clamp.registry import Method, stage_options
from clamp.search.alignment import HeldOut, rank_correlation
from clamp.search.evolution import Candidate, Evolution, EvolutionConfig, best
from clamp.search.mixed import RULES, BitBudget
from clamp.task import Task

DATA_SOURCES = ("contrastive", "psaq", "gaussian")
MP_GENES = ("all", "cost")
BLOCK_ORDERS = ("last_first", "first_last")
GROUPS = ("modules", "forward")
GLOBAL_LOSSES = ("task", "infonce")
FITNESS_IMAGES = ("stage1", "unlabelled")


@torch.no_grad()
def forward_order(net: nn.Module, x: torch.Tensor) -> list[Quantizer]:
    """``net``'s quantizers in the order a forward of ``x[:1]`` first uses them (a weight
    quantizer when its layer runs); any it never uses follow in module order."""
    seen: dict[int, Quantizer] = {}

    def note(q: Quantizer) -> None:  # a pre-hook that returned a value would replace the input
        seen.setdefault(id(q), q)

    handles = [q.register_forward_pre_hook(lambda q, _a: note(q)) for q in quantizers(net) if not is_weight(q)]
    handles += [layer.register_forward_pre_hook(lambda layer, _a: note(layer.w_quant)) for layer in quant_layers(net)]
    try:
        net(x[:1])
    finally:
        for h in handles:
            h.remove()
    return [*seen.values(), *(q for q in quantizers(net) if id(q) not in seen)]


def block_groups(net: nn.Module, order: list[Quantizer] | None = None) -> list[tuple[nn.Module, list[Quantizer]]]:
    """Each transformer block with the quantizers searched together with it: its own, plus any
    quantizer between the previous block and it (patch embedding, patch merging); quantizers
    after the last block (final norm, head) join the last block. "Between" follows ``order``
    (default: module order, where the embedding sums a reference-layout ViT adds to its root come
    after the head; ``forward_order`` puts them before block 0)."""
    blocks = transformer_blocks(net)
    groups: list[tuple[nn.Module, list[Quantizer]]] = [(block, []) for _, block in blocks]
    pending: list[Quantizer] = []
    index = {id(q): i for i, (_, block) in enumerate(blocks) for q in quantizers(block)}
    for q in order or quantizers(net):
        if id(q) in index:
            groups[index[id(q)]][1].extend([*pending, q])
            pending = []
        else:
            pending.append(q)
    groups[-1][1].extend(pending)
    return groups


class BlockOutputs:
    """Context manager recording every block's output as patch tokens during a forward."""

    def __init__(self, net: nn.Module, blocks: list[nn.Module]) -> None:
        self.net, self.blocks, self.outputs = net, blocks, {}
        self._handles = []

    def __enter__(self) -> BlockOutputs:
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(
                lambda _m, _a, out, i=i: self.outputs.__setitem__(i, patch_tokens(self.net, out))))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def _stage1(default: Any) -> Any:
    """A stage-1 option: the cache of generated images is keyed on these (``stage_options``)."""
    return field(default=default, metadata={"stage": 1})


@dataclass
class ClampViT(Method):
    n: int = _stage1(32)
    # stage 1: generation
    data: str = _stage1("contrastive")
    rounds: tuple[tuple[int, int], ...] = _stage1(((500, 15), (500, 30)))
    lr: float = _stage1(0.2)
    tau: float = _stage1(0.1)
    top_k: int = _stage1(4)
    negatives: str = _stage1("neighbourhood")
    ce_weight: float = _stage1(1.0)
    tv_weight: float = _stage1(0.05)
    tv_target: tuple[float, float] = _stage1((2500.0, 3000.0))
    scale_to_input: bool = _stage1(True)
    # stage 2: search and cyclic adaptation
    search: bool = True
    passes: int = 10
    cycles: int = 6
    population: int = 15
    tournament: int = 10
    local_loss: bool = True
    output_loss: bool = True
    adaptation: bool = True
    refine_steps: int = 5
    refine_lr: float = 0.05
    adv_weight: float = 1.0
    act_genes: bool = False
    block_order: str = "last_first"
    groups: str = "modules"  # quantizers outside the blocks join a block in module or forward order
    global_loss: str = "task"  # the fitness's output term: the task's (KL of logits, L_O) or Evol-Q's InfoNCE
    global_tau: float = 3.0  # InfoNCE's temperature (Evol-Q's T)
    recalibrate: bool = True  # re-observe the activation ranges on the refined images (#28: measured)
    fitness_images: str = "stage1"  # the search's images: stage 1's, or a batch generated without the label term
    mutation: str = "relative"  # to each channel's scale, or Evol-Q's absolute radii (tuned for DeiT)
    # mixed precision
    bit_choices: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    bit_move: str = "step"  # a mutated bit gene: one bit up or down, or redrawn from bit_choices (redraw)
    mp_children: str = "apart"  # bits and scales mutate in children of their own (apart), or in one child (joint)
    mp_genes: str = "cost"  # only the sites the budget counts carry bit genes, or every quantizer (all)
    budget: str = "bops"  # the MP budget rule (clamp/search/mixed.py): BOPS with the matmuls, or size+bops

    name = "clamp-vit"
    mixed_precision = True
    # the harness sets it on the instance to score the search's children after the fact on real
    # training images (clamp/search/alignment.py); the search never reads it for a decision
    held_out: ClassVar[HeldOut | None] = None

    def __post_init__(self) -> None:
        if self.data not in DATA_SOURCES:
            raise ValueError(f"unknown data source {self.data!r}: choose one of {', '.join(DATA_SOURCES)}")
        if self.search and self.cycles < 2:
            raise ValueError("cycles must be at least 2 (adaptation runs every cycles/2)")
        for option, choices in (("negatives", NEGATIVES), ("block_order", BLOCK_ORDERS), ("mp_genes", MP_GENES),
                                ("groups", GROUPS), ("global_loss", GLOBAL_LOSSES),
                                ("fitness_images", FITNESS_IMAGES), ("budget", RULES)):
            if getattr(self, option) not in choices:
                raise ValueError(f"unknown {option} {getattr(self, option)!r}: use {' or '.join(choices)}")
        self.evolution_config()  # bit_move, mutation and mp_children are checked there

    def evolution_config(self) -> EvolutionConfig:
        return EvolutionConfig(self.population, self.tournament, bit_choices=tuple(self.bit_choices),
                               bit_move=self.bit_move, mutation=self.mutation, children=self.mp_children)

    # ---- stage 1 -------------------------------------------------------------------------
    def data_loss(self, task: Task, net: nn.Module, capture: MHSACapture, labels: torch.Tensor | None,
                  tv_goal: float):
        """The generation loss of the chosen data source, as a function of a batch of images."""
        tv = TVPrior(self.tv_weight, tuple(self.tv_target), self.scale_to_input)

        def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, object]:
            capture.clear()
            out = net(x)
            loss = tv(x, tv_goal)
            if self.data == "contrastive":
                loss = loss + sum(patch_contrastive_loss(o.grid, self.tau, self.top_k, negatives=self.negatives)
                                  for o in capture.outputs)
            elif self.data == "psaq":
                loss = loss - patch_similarity_entropy(capture.outputs)
            if labels is not None:
                loss = loss + self.ce_weight * F.cross_entropy(out, labels)
            return loss, out
        return loss_fn

    def _prior_inputs(self, task: Task, seed: int, labelled: bool = True) -> tuple[torch.Tensor | None, float]:
        """Random labels (None for a label-free task, or ``labelled=False``) and the TV target; the
        labels are drawn either way so that the TV target of a seed stays the same."""
        gen = torch.Generator().manual_seed(seed)
        labels = None
        if task.num_classes and self.data != "gaussian":
            labels = torch.randint(task.num_classes, (self.n,), generator=gen).to(task.device)
        tv_goal = TVPrior(self.tv_weight, tuple(self.tv_target), self.scale_to_input).goal(
            (self.n, *task.input_spec.shape), gen)
        return (labels if labelled else None), tv_goal

    def generate(self, task: Task, net: nn.Module, seed: int, labelled: bool = True) -> torch.Tensor:
        spec = task.input_spec
        x = noise(spec, self.n, seed, task.device)
        if self.data == "gaussian":
            return x
        labels, tv_goal = self._prior_inputs(task, seed, labelled)
        config = GenerationConfig(batch=self.n, rounds=tuple(map(tuple, self.rounds)), lr=self.lr,
                                  scale_jitter=self.scale_to_input)
        with MHSACapture(net) as capture:
            loss_fn = self.data_loss(task, net, capture, labels, tv_goal)
            return optimise_images(x, lambda v: loss_fn(v)[0], spec, config, seed, f"{self.name} stage 1")

    def refine(self, task: Task, net: nn.Module, qnet: nn.Module, images: torch.Tensor,
               prior: tuple[torch.Tensor | None, float], seed: int) -> torch.Tensor:
        """Cyclic adaptation: a few steps of the stage-1 loss with stage 1's labels and TV target
        (``prior``, from ``_prior_inputs`` at the cell's seed), plus a term maximising
        L_O(FP, quantized). ``seed`` only moves the jitter and flips of these steps."""
        labels, tv_goal = prior
        config = GenerationConfig(batch=self.n, rounds=((self.refine_steps, self.rounds[-1][1]),), lr=self.refine_lr,
                                  warmup=0, scale_jitter=self.scale_to_input)
        with MHSACapture(net) as capture:
            loss_fn = self.data_loss(task, net, capture, labels, tv_goal)

            def adaptive(x: torch.Tensor) -> torch.Tensor:
                loss, fp_out = loss_fn(x)
                return loss - self.adv_weight * task.output_loss(fp_out, qnet(x))
            return optimise_images(images, adaptive, task.input_spec, config, seed, "adapt")

    # ---- stage 2 -------------------------------------------------------------------------
    def quantize_backbone(self, task: Task, net: nn.Module, config: QuantConfig, seed: int) -> tuple[nn.Module, dict]:
        key = {"method": self.name, "stage": 1, "options": stage_options(self, 1), "model": task.model_id,
               "weights": task.weights_id, "seed": seed}
        images, path = cached_images(key, lambda: self.generate(task, net, seed), task.input_spec)
        images = images.to(task.device)
        qnet = calibrate(quantize_model(net, config), images.split(32))
        report = {"calibration": f"{self.name}:{self.n}", "n_calib": self.n, "images": str(path)}
        generation_steps = 0 if self.data == "gaussian" else sum(steps for steps, _ in self.rounds)
        image_steps = generation_steps
        if self.search:
            if self.fitness_images == "unlabelled":  # calibrated on stage 1's images, searched on these
                def unlabelled() -> torch.Tensor:
                    return self.generate(task, net, seed, labelled=False)
                images, fit_path = cached_images({**key, "stage": "1-unlabelled"}, unlabelled, task.input_spec)
                images = images.to(task.device)
                report["fitness_images"] = str(fit_path)
                image_steps += generation_steps
            images, search_report = Search(self, task, net, qnet, images, config.mixed, seed, self.held_out).run()
            report.update(search_report)
            image_steps += search_report["refine_steps"]
        report["image_steps"] = image_steps  # every optimiser step on synthetic images: the generation budget
        report["image_stats"] = image_stats(images, task.input_spec)
        comp = compression_report(qnet)
        # plain means over layers, the way the paper writes W4.9/A6.2 (weighted means are in the row)
        report["bits"] = f"W{comp['mean_w_bits_plain']:.1f}/A{comp['mean_a_bits']:.1f}"
        return qnet, report


class Search:
    """Stage 2 for one model: layer-wise evolutionary search with cyclic data adaptation."""

    def __init__(self, method: ClampViT, task: Task, net: nn.Module, qnet: nn.Module, images: torch.Tensor,
                 mixed: bool, seed: int, held_out: HeldOut | None = None) -> None:
        self.m, self.task, self.net, self.qnet, self.images, self.mixed = method, task, net, qnet, images, mixed
        self.seed = seed
        self.held_out = held_out
        self.children: list[tuple[int, float, float]] = []  # (block, fitness change, held-out change)
        # stage 1's labels (none for unlabelled fitness images) and TV target, reused by refine
        self.prior = method._prior_inputs(task, seed, labelled=method.fitness_images == "stage1")
        self.groups = block_groups(qnet, forward_order(qnet, images) if method.groups == "forward" else None)
        self.fp_blocks = [block for _, block in transformer_blocks(net)]
        self.q_blocks = [block for block, _ in self.groups]
        self.budget = BitBudget(qnet, method.budget) if mixed else None
        self.bits = {q.name: q.bits for q in quantizers(qnet)}
        by_name = {q.name: q for q in quantizers(qnet)}
        self.bit_genes = set(self.bits) if method.mp_genes == "all" or not mixed else self.budget.cost_sites
        self.evo = Evolution(method.evolution_config(), seed, mixed,
                             rescale=lambda name, bits: by_name[name].scale_at(bits))
        self.refine_steps = 0
        self.refresh_references()

    @torch.no_grad()
    def refresh_references(self) -> None:
        with BlockOutputs(self.net, self.fp_blocks) as rec:
            self.fp_out = self.net(self.images)
        self.fp_block_out = rec.outputs

    def start(self, group: list[Quantizer]) -> Candidate:
        """The group's current parameters as a candidate: weight scales, optional activation
        multipliers, and (mixed precision) the bits of its quantizers that are bit genes."""
        weights = [q for q in group if is_weight(q)]
        acts = [q for q in group if not is_weight(q)] if self.m.act_genes else []
        return Candidate({q.name: q.scale.clone() for q in weights}, {q.name: q.mult for q in acts},
                         {q.name: q.bits for q in group if q.name in self.bit_genes} if self.mixed else {})

    def apply(self, group: list[Quantizer], cand: Candidate) -> None:
        for q in group:
            if self.mixed and cand.bits.get(q.name, q.bits) != q.bits:
                q.set_bits(cand.bits[q.name])
            if q.name in cand.scales:
                q.set_scale(cand.scales[q.name])
            if q.name in cand.mults:
                q.set_mult(cand.mults[q.name])

    @torch.no_grad()
    def fitness(self, i: int, cand: Candidate) -> float:
        """L_C of block ``i`` plus L_O of the output; an inadmissible mixed-precision plan is
        infinitely unfit: the budget is a hard limit (DESIGN section 5), where a finite penalty
        was outweighed by the loss of a pretrained model (a plan 2.3% over the W4/A8 size)."""
        if self.mixed:
            self.bits.update(cand.bits)
            if not self.budget.admissible(self.bits):
                return math.inf
        self.apply(self.groups[i][1], cand)
        with BlockOutputs(self.qnet, [self.q_blocks[i]]) as rec:
            q_out = self.qnet(self.images)
        f = 0.0
        if self.m.local_loss:
            f += local_contrastive_loss(rec.outputs[0], self.fp_block_out[i], self.m.tau).item()
        if self.m.output_loss:
            f += self.global_term(q_out)
        if self.held_out is not None and cand.held is None:  # the diagnostic: never read by the search
            cand.held = self.held_out(self.qnet)
        return f

    def global_term(self, q_out: object) -> float:
        if self.m.global_loss == "task":
            return self.task.output_loss(self.fp_out, q_out).item()
        if not isinstance(q_out, torch.Tensor) or q_out.dim() != 2:
            raise ValueError("global_loss=infonce compares per-image outputs (B, D) such as logits: use "
                             "global_loss=task on dense tasks")
        return image_contrastive_loss(q_out, self.fp_out, self.m.global_tau).item()

    def record_child(self, i: int, child: Candidate) -> None:
        """The child's fitness and held-out changes against its parent's (both on the same data)."""
        parent, child.parent = child.parent, None
        if self.held_out is not None and math.isfinite(child.fitness) and math.isfinite(parent.fitness):
            self.children.append((i, child.fitness - parent.fitness, child.held - parent.held))

    def rescore(self, i: int, population: list[Candidate]) -> None:
        """Fitness of every distinct candidate on the refined data (copies share one evaluation)."""
        seen: dict[int, float] = {}
        for cand in population:
            key = _key(cand)
            if key not in seen:
                seen[key] = self.fitness(i, cand)
            cand.fitness = seen[key]
        population.sort(key=lambda c: c.fitness)

    def run(self) -> tuple[torch.Tensor, dict]:
        m = self.m
        order = list(range(len(self.groups)))
        if m.block_order == "last_first":
            order.reverse()
        start_fitness, end_fitness = {}, {}
        bits_of = self.bits.__getitem__
        for p in range(m.passes):
            for i in order:
                group = self.groups[i][1]
                population = self.evo.initial(self.start(group), lambda c, i=i: self.fitness(i, c))
                if p == 0:
                    start_fitness[i] = round(population[0].fitness, 5)
                for c in range(m.cycles):
                    self.record_child(i, self.evo.cycle(population, bits_of, lambda c, i=i: self.fitness(i, c)))
                    if m.adaptation and (c + 1) % (m.cycles // 2) == 0:
                        self.apply(group, best(population))
                        self.images = m.refine(self.task, self.net, self.qnet, self.images, self.prior,
                                               self.seed + 7919 * (p * len(self.groups) + i + 1))
                        self.refine_steps += m.refine_steps
                        if m.recalibrate:
                            recalibrate_activations(self.qnet, self.images.split(32))
                        self.refresh_references()
                        self.rescore(i, population)
                winner = best(population)
                self.apply(group, winner)
                if self.mixed:
                    self.bits.update(winner.bits)
                if p == m.passes - 1:
                    end_fitness[i] = round(winner.fitness, 5)
        # per block, in forward order: fitness of the min-max start (first pass, stage-1 data)
        # and of the final choice (last pass, on the data as adapted by then)
        report = {"fitness_start": [start_fitness[i] for i in sorted(start_fitness)],
                  "fitness_end": [end_fitness[i] for i in sorted(end_fitness)],
                  "passes": m.passes, "cycles": m.cycles, "refine_steps": self.refine_steps}
        if self.held_out is not None:
            fit, held = [c[1] for c in self.children], [c[2] for c in self.children]
            alignment = rank_correlation(fit, held)
            report["alignment"] = None if alignment is None else round(alignment, 4)
            report["alignment_children"] = [[i, round(f, 7), round(h, 7)] for i, f, h in self.children]
        if isinstance(self.fp_out, tuple | list):  # a dense backbone: the maps L_O compared, pooled or not
            report["lo_maps"] = feature_lo_maps(self.fp_out)
        if self.mixed:
            report["budget"] = self.budget.rule
            report["size_target_mb"] = round(self.budget.target_size / 8 / 1e6, 6)
            report["gbops_target"] = round(self.budget.target_bops / 1e9, 6)
        return self.images, report


def _key(cand: Candidate) -> int:
    """Candidates that share their first scale tensor are copies of one another (the initial population)."""
    return id(next(iter(cand.scales.values()), cand))
