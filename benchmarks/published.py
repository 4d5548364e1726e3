"""Published numbers (benchmarks/published.csv, from the CLAMP-ViT and PSAQ-ViT papers) side by
side with the reproduced ones from the leaderboard."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.leaderboard import summary, table
from benchmarks.store import ResultStore
from clamp.io import atomic_write_text

PUBLISHED = Path(__file__).parent / "published.csv"


def report(store: ResultStore, task: str = "classification") -> pd.DataFrame:
    published = pd.read_csv(PUBLISHED)
    published = published[published["task"] == task]
    summ = summary(table(store, task))
    # the published setting: the reference quantizer layout, no ablation or option variant
    summ = summ[(summ["ablation"] == "") & (summ["layout"] == "reference")]
    reproduced = summ.assign(precision=summ["precision"].where(~summ["precision"].str.startswith("MP-"), "MP"))
    fp = summ.groupby("model", as_index=False)["fp_value"].first().assign(method="fp", precision="FP")
    fp = fp.rename(columns={"fp_value": "quant_mean"})
    reproduced = pd.concat([reproduced, fp], ignore_index=True)
    joined = published.merge(reproduced[["model", "method", "precision", "quant_mean", "quant_std", "seeds",
                                         "mean_w_bits", "mean_a_bits"]],
                             on=["model", "method", "precision"], how="left")
    joined = joined.rename(columns={"value": "published", "quant_mean": "reproduced"})
    joined["difference"] = joined["reproduced"] - joined["published"]
    # the papers' numbers are ImageNet's: the micro and pretrained tiers are never compared to them
    joined["status"] = joined["reproduced"].map(lambda v: "not run (needs ImageNet + GPU)" if pd.isna(v)
                                                else "reproduced")
    return joined.sort_values(["model", "method", "precision"], kind="stable").reset_index(drop=True)


def write_report(store: ResultStore, task: str = "classification") -> Path:
    frame = report(store, task).round(3)
    path = store.root / f"published_vs_reproduced_{task}.csv"
    atomic_write_text(path, frame.to_csv(index=False))
    return path
