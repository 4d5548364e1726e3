"""A cell is one (task, model, method, precision, seed) run; its key is a hash of its configuration."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from clamp.quant import BitPlan, QuantConfig, check_bits

PRECISION = re.compile(r"^(MP-)?W(\d+)A(\d+)$")
QUANT_OPTIONS = {f.name for f in fields(QuantConfig)} - {"plan", "mixed"}  # those two come from the precision


def parse_precision(text: str) -> tuple[int, int, bool]:
    """'W4A8' -> (4, 8, False); 'MP-W4A8' -> mixed precision at the compression ratio of W4/A8."""
    match = PRECISION.match(text.replace("/", ""))
    if not match:
        raise ValueError(f"bad precision {text!r}: write W4A8, W8A8, ... or MP-W4A8 for mixed precision")
    return int(match[2]), int(match[3]), bool(match[1])


def precision_name(w_bits: int, a_bits: int, mixed: bool) -> str:
    """(4, 8, True) -> 'MP-W4A8': the one place a precision is named (parse_precision reads it back)."""
    return f"{'MP-' if mixed else ''}W{w_bits}A{a_bits}"


def config_precision(config: dict[str, Any]) -> str:
    """The precision of a stored cell configuration."""
    return precision_name(config["w_bits"], config["a_bits"], config["mixed"])


@dataclass(frozen=True)
class Cell:
    """Everything that defines a result. Where it runs (device, data folder) is not part of it."""

    task: str
    model: str
    method: str
    w_bits: int
    a_bits: int
    seed: int = 0
    mixed: bool = False
    n_eval: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    quant_options: dict[str, Any] = field(default_factory=dict)  # QuantConfig fields: observers, softmax_quant, ...
    task_options: dict[str, Any] = field(default_factory=dict)  # task adapter options (mm: quant_neck)
    weights: str | None = None  # sha256 prefix of a --checkpoint; None: the model's own published weights

    def __post_init__(self) -> None:
        check_bits(self.w_bits)
        check_bits(self.a_bits)
        if self.n_eval is not None and (not isinstance(self.n_eval, int) or self.n_eval < 1):
            raise ValueError(f"n_eval {self.n_eval!r} is not a positive number of images: pass --n-eval 1 or more")
        unknown = set(self.quant_options) - QUANT_OPTIONS
        if unknown:
            raise ValueError(f"unknown quantizer options {sorted(unknown)}: use {', '.join(sorted(QUANT_OPTIONS))}")
        object.__setattr__(self, "quant_options", {"layout": QuantConfig.layout, **self.quant_options})
        self.quant_config()  # rejects impossible quantizer options before any work

    @property
    def precision(self) -> str:
        return precision_name(self.w_bits, self.a_bits, self.mixed)

    def config(self) -> dict[str, Any]:
        """Every field, explicitly: what a record stores (schema version 2)."""
        return asdict(self)

    @property
    def key(self) -> str:
        """The hash of the configuration with the fields added after cells were first stored left
        out at the value those cells had (empty task options, default weights, the inputs layout),
        so that their keys hold."""
        config = self.config()
        for name in ("task_options", "weights"):
            if not config[name]:
                del config[name]
        if config["quant_options"]["layout"] == "inputs":
            del config["quant_options"]["layout"]
        blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def quant_config(self, exclude: tuple[str, ...] = ()) -> QuantConfig:
        options = dict(self.quant_options)
        options["exclude"] = tuple(exclude) + tuple(options.get("exclude", ()))
        return QuantConfig(plan=BitPlan(self.w_bits, self.a_bits), mixed=self.mixed, **options)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Cell:
        """The cell of a stored configuration (schema version 2: every field present)."""
        return cls(**config)


SCHEMA_VERSION = 2  # 2: records store every cell field; 1 (no version): the key's form, without defaults


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record in the current schema. Version 1 stored the key's form of the
    configuration, where an absent layout meant ``inputs`` (the only layout when it was written)."""
    if record.get("schema_version", 1) == SCHEMA_VERSION:
        return record
    config = {"task_options": {}, "weights": None, **record["config"]}
    config["quant_options"] = {"layout": "inputs", **config.get("quant_options", {})}
    return {**record, "config": config, "schema_version": SCHEMA_VERSION}
