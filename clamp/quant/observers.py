"""Observers turn what a tensor looked like during calibration into a clipping range [lo, hi].

Per-tensor observers reduce over everything; per-channel observers (weights) keep ``axis``.
Percentile and OMSE need the values themselves, so they keep a bounded, deterministic sample.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

MAX_SAMPLES = 1 << 18  # per observed tensor; enough for stable percentiles, cheap to keep
Quantize = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Observer:
    """Running min/max; the base of every observer."""

    def __init__(self, axis: int | None = None) -> None:
        if axis not in (None, 0):
            raise ValueError("per-channel observers reduce over every axis but the first")
        self.axis = axis
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    @property
    def seen(self) -> bool:
        return self.lo is not None

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """(channels, values) for per-channel observers, (1, values) otherwise."""
        x = x.float()
        return x.reshape(1, -1) if self.axis is None else x.reshape(x.shape[0], -1)

    def observe(self, x: torch.Tensor) -> None:
        flat = self._flat(x)
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self, quantize: Quantize | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._squeeze(self.lo), self._squeeze(self.hi)

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(()) if self.axis is None else t


class SampleObserver(Observer):
    """Min/max plus a bounded sample of the observed values (strided, so deterministic)."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__(axis)
        self.samples: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        flat = self._flat(x)
        stride = max(1, flat.shape[1] * flat.shape[0] // MAX_SAMPLES)
        self.samples.append(flat[:, ::stride].cpu())

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples, dim=1)


class PercentileObserver(SampleObserver):
    """Clips at the ``p``-th and ``(100 - p)``-th percentiles, ignoring rare outliers."""

    def __init__(self, axis: int | None = None, p: float = 99.99) -> None:
        super().__init__(axis)
        self.p = p

    def range(self, quantize: Quantize | None) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values().to(self.lo.device)
        q = torch.tensor([1 - self.p / 100, self.p / 100], device=v.device)
        lo, hi = torch.quantile(v, q, dim=1)
        return self._squeeze(lo), self._squeeze(hi)


class OMSEObserver(SampleObserver):
    """Optimal MSE: shrinks the min-max range by the factor (per channel) that minimises the
    squared quantization error on the observed values (Choukroun et al., 2019)."""

    def __init__(self, axis: int | None = None, steps: int = 100) -> None:
        super().__init__(axis)
        self.ratios = torch.linspace(1.0 / steps, 1.0, steps)

    def range(self, quantize: Quantize | None) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values().to(self.lo.device)
        best_err = torch.full_like(self.lo, float("inf"))
        best_lo, best_hi = self.lo.clone(), self.hi.clone()
        for r in self.ratios:
            lo, hi = self.lo * r, self.hi * r
            x_hat = quantize(self._squeeze(lo), self._squeeze(hi), self._unflat(v))
            err = (self._flat(x_hat) - v).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return self._squeeze(best_lo), self._squeeze(best_hi)

    def _unflat(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1) if self.axis is None else v


class ChannelSampleObserver(Observer):
    """Per-tensor min/max plus, per channel of the LAST axis, min/max and a bounded, strided sample
    of its values: what a power-of-two factor per channel is chosen from (``PtfQuantizer``)."""

    def __init__(self) -> None:
        self.axis = -1
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        rows = x.detach().float().reshape(-1, x.shape[-1])
        lo, hi = rows.amin(dim=0), rows.amax(dim=0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        stride = max(1, rows.numel() // MAX_SAMPLES)
        self.samples.append(rows[::stride].cpu())

    def values(self) -> torch.Tensor:
        """(channels, samples)."""
        return torch.cat(self.samples).t()

    def range(self, quantize: Quantize | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo.min(), self.hi.max()


OBSERVERS = {"minmax": Observer, "percentile": PercentileObserver, "omse": OMSEObserver}


def make_observer(name: str, axis: int | None = None) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}: choose one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name](axis)
