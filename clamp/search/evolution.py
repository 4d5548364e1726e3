"""Evol-Q's evolutionary search over one block's quantization parameters.

Follows enyac-group/evol-q ``joint_evol_opt.py`` (``mutate``, ``evolutionary_algorithm``): the
genes are every output channel's weight scale of the block's quantized layers; a mutation adds
U(-r, r) to each scale and takes the absolute value (r = 1e-3 at 3-4 bits, 1e-4 at 8 bits; we
take 1e-3 at <= 4 bits and 1e-4 above, where Evol-Q untested falls back to 1e-3); the population
starts as ``population`` copies of the current scales; each cycle draws a tournament of
``tournament`` with replacement, mutates its best, adds the child and drops the worst, so the best
fitness never increases. Options of ours: per-tensor activation scale multipliers as extra genes
(multiplicative, +-1% at <= 4 bits, +-0.1% above); ``mutation="relative"``, the radius a fraction
of each channel's own scale (Evol-Q's absolute radii, tuned on DeiT, are 12-51% of the median
8-bit channel scale of DINOv2-S); and, for mixed precision, bit-width genes, redrawn from
``bit_choices`` (``bit_move="redraw"``) or moved one bit up or down (``"step"``), in every child
together with its scales (``children="joint"``) or in children of their own (``"apart"``: a bit child,
with probability ``bit_child_rate``, moves one bit gene and keeps every scale but those a new
bit-width restarts; a scale child keeps the bits), so that a plan is judged by its bits and not by a
lucky scale mutation riding along.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Candidate:
    """Weight scales (per output channel) by quantizer name, activation multipliers, bits."""

    scales: dict[str, torch.Tensor]
    mults: dict[str, float] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=dict)
    fitness: float = float("inf")
    held: float | None = None  # a diagnostic's loss on held-out images (clamp/search/alignment.py)
    parent: Candidate | None = field(default=None, repr=False)  # a fresh child's, until its reader drops it

    def copy(self) -> Candidate:
        return Candidate(dict(self.scales), dict(self.mults), dict(self.bits), self.fitness, self.held)


@dataclass
class EvolutionConfig:
    population: int = 15
    tournament: int = 10
    scale_step_low_bits: float = 1e-3  # r of the additive weight-scale mutation at <= 4 bits
    scale_step_high_bits: float = 1e-4  # ... and above 4 bits
    mult_step_low_bits: float = 1e-2  # relative step of activation multipliers at <= 4 bits
    mult_step_high_bits: float = 1e-3  # ... and above
    bit_choices: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # mixed-precision genes
    bit_mutation: float = 0.1  # probability that a bit gene mutates
    bit_move: str = "redraw"  # redraw: any of bit_choices; step: one bit up or down, within them
    children: str = "joint"  # joint: bits and scales mutate in one child; apart: a child moves either
    bit_child_rate: float = 0.5  # ... the share of bit children when apart
    mutation: str = "absolute"  # absolute: Evol-Q's radii; relative: the radii below times each channel's scale
    # Evol-Q's radii as fractions of the median channel scale of a DeiT (micro DeiT, measured: 1e-3 is
    # 7.8% of its 4-bit median, 1e-4 13.3% of its 8-bit one; on DINOv2-S they are 13.3% and 22.5%)
    relative_low_bits: float = 0.08  # relative radius at <= 4 bits
    relative_high_bits: float = 0.13  # ... and above

    def __post_init__(self) -> None:
        if self.bit_move not in BIT_MOVES:
            raise ValueError(f"unknown bit mutation {self.bit_move!r}: use {' or '.join(BIT_MOVES)}")
        if self.mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {self.mutation!r}: use {' or '.join(MUTATIONS)}")
        if self.children not in CHILDREN:
            raise ValueError(f"unknown children {self.children!r}: use {' or '.join(CHILDREN)}")


BIT_MOVES = ("redraw", "step")
MUTATIONS = ("absolute", "relative")
CHILDREN = ("joint", "apart")


class Evolution:
    """Mutation and one Evol-Q cycle. ``rescale(name, bits)`` gives a weight quantizer's min-max
    scale at other bits: a redrawn weight bit gene restarts its scales from there."""

    def __init__(self, config: EvolutionConfig, seed: int, mixed: bool = False,
                 rescale: Callable[[str, int], torch.Tensor] | None = None) -> None:
        self.config, self.mixed, self.rescale = config, mixed, rescale
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def new_bits(self, bits: int) -> int:
        """A mutated bit gene: any choice (redraw) or a neighbour within the choices (step)."""
        choices = self.config.bit_choices
        if self.config.bit_move == "redraw":
            return self.rng.choice(choices)
        return self.rng.choice([b for b in (bits - 1, bits + 1) if min(choices) <= b <= max(choices)])

    def mutate(self, parent: Candidate, bits_of: Callable[[str], int]) -> Candidate:
        cfg = self.config
        child = parent.copy()
        child.held = None
        if self.mixed and cfg.children == "apart":
            if child.bits and self.rng.random() < cfg.bit_child_rate:
                name = self.rng.choice(sorted(child.bits))
                child.bits[name] = self.new_bits(child.bits[name])
                if name in child.scales and child.bits[name] != parent.bits[name]:
                    child.scales[name] = self.rescale(name, child.bits[name])
                return child
            self._mutate_scales(parent, child, bits_of)
            return child
        if self.mixed:
            for name in child.bits:
                if self.rng.random() < cfg.bit_mutation:
                    child.bits[name] = self.new_bits(child.bits[name])
        self._mutate_scales(parent, child, bits_of)
        return child

    def _mutate_scales(self, parent: Candidate, child: Candidate, bits_of: Callable[[str], int]) -> None:
        """Evol-Q's scale mutation of ``child`` (a copy of ``parent``, its bits already chosen): a
        weight whose bits moved restarts from its min-max scale at the new bits."""
        cfg = self.config
        for name, scale in parent.scales.items():
            bits = child.bits.get(name, bits_of(name))
            if bits != parent.bits.get(name, bits):
                scale = self.rescale(name, bits)
            if cfg.mutation == "absolute":
                r = cfg.scale_step_low_bits if bits <= 4 else cfg.scale_step_high_bits
            else:
                r = (cfg.relative_low_bits if bits <= 4 else cfg.relative_high_bits) * scale
            noise = (torch.rand(scale.shape, generator=self.gen, dtype=scale.dtype) * 2 - 1) * r
            child.scales[name] = (scale + noise.to(scale.device)).abs()
        for name, mult in parent.mults.items():
            step = cfg.mult_step_low_bits if child.bits.get(name, bits_of(name)) <= 4 else cfg.mult_step_high_bits
            child.mults[name] = mult * (1 + self.rng.uniform(-step, step))

    def initial(self, start: Candidate, fitness: Callable[[Candidate], float]) -> list[Candidate]:
        """``population`` copies of the start, evaluated once (Evol-Q's initial population)."""
        start = start.copy()
        start.fitness = fitness(start)
        return [start.copy() for _ in range(self.config.population)]

    def cycle(self, population: list[Candidate], bits_of: Callable[[str], int],
              fitness: Callable[[Candidate], float]) -> Candidate:
        """Tournament with replacement, mutate its best, add the child, drop the worst; returns the
        child, its ``parent`` set."""
        contenders = self.rng.choices(population, k=self.config.tournament)
        parent = min(contenders, key=lambda c: c.fitness)
        child = self.mutate(parent, bits_of)
        child.fitness, child.parent = fitness(child), parent
        population.append(child)
        population.sort(key=lambda c: c.fitness)
        population.pop()
        return child


def best(population: list[Candidate]) -> Candidate:
    return min(population, key=lambda c: c.fitness)
