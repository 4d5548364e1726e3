"""A small steady-state evolutionary algorithm over quantization parameters.

A candidate holds one scale multiplier per quantizer (and, for mixed precision, one bit-width).
Each cycle draws a tournament, mutates its best, and lets the child replace the population's
worst when it is better: the best fitness never gets worse.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Candidate:
    mults: dict[str, float]
    bits: dict[str, int] = field(default_factory=dict)
    fitness: float = float("inf")


@dataclass
class EvolutionConfig:
    population: int = 15
    tournament: int = 10
    delta_low_bits: float = 1e-2  # mutation range of scale multipliers for <= 4 bits
    delta_high_bits: float = 1e-3  # ... and above 4 bits
    bit_choices: tuple[int, ...] = (4, 6, 8)  # mixed precision genes
    bit_mutation: float = 0.1  # probability that a bit gene is redrawn


class Evolution:
    """Mutation, initialisation and one cycle; ``mixed`` turns bit-widths into genes."""

    def __init__(self, config: EvolutionConfig, rng: random.Random, mixed: bool = False) -> None:
        self.config, self.rng, self.mixed = config, rng, mixed

    def mutate(self, parent: Candidate, bits_of: Callable[[str], int]) -> Candidate:
        bits = dict(parent.bits)
        if self.mixed:
            for name in bits:
                if self.rng.random() < self.config.bit_mutation:
                    bits[name] = self.rng.choice(self.config.bit_choices)
        mults = {}
        for name, m in parent.mults.items():
            b = bits.get(name, bits_of(name))
            delta = self.config.delta_low_bits if b <= 4 else self.config.delta_high_bits
            mults[name] = m * (1 + self.rng.uniform(-delta, delta))
        return Candidate(mults, bits)

    def initial(self, start: Candidate, bits_of: Callable[[str], int],
                fitness: Callable[[Candidate], float]) -> list[Candidate]:
        """The start candidate plus mutants of it, all evaluated."""
        population = [Candidate(dict(start.mults), dict(start.bits))]
        population += [self.mutate(start, bits_of) for _ in range(self.config.population - 1)]
        for c in population:
            c.fitness = fitness(c)
        return population

    def cycle(self, population: list[Candidate], bits_of: Callable[[str], int],
              fitness: Callable[[Candidate], float]) -> Candidate:
        """Tournament, mutate its best, child replaces the worst if better; returns the child."""
        contenders = self.rng.sample(population, min(self.config.tournament, len(population)))
        child = self.mutate(min(contenders, key=lambda c: c.fitness), bits_of)
        child.fitness = fitness(child)
        worst = max(range(len(population)), key=lambda i: population[i].fitness)
        if child.fitness < population[worst].fitness:
            population[worst] = child
        return child


def best(population: list[Candidate]) -> Candidate:
    return min(population, key=lambda c: c.fitness)
