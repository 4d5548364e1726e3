"""The leaderboard: stored cells -> one CSV per task (one row per cell), a summary over seeds,
a markdown table and a plot of the metric against the compression ratio. Built with pandas; the
same cells always give the same bytes. Records from a dirty work tree never become rows; a row is
``stale`` when today's code computes something else on its path (benchmarks/fingerprint.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from benchmarks import deploy
from benchmarks.cell import config_precision
from benchmarks.fingerprint import Fingerprints, path_of
from benchmarks.provenance import is_dirty
from benchmarks.store import ResultStore
from clamp.io import atomic_write, atomic_write_text

# the fixed columns; then, flattened from the record by pandas.json_normalize and sorted:
# quant_metrics.<metric> (every metric of the quantized model, percent), method_options.<name>,
# quant_options.<name>, task_options.<name> and versions.<library> (and versions.commit)
COLUMNS = ["task", "model", "method", "precision", "layout", "w_bits", "a_bits", "mean_w_bits", "mean_a_bits",
           "mean_w_bits_plain", "mean_a_bits_weighted", "compression_ratio", "gbops", "size_mb", "n_params",
           "metric", "fp_value", "quant_value", "delta", "int_top1", "int_vs_fake", "int_speedup", "seed",
           "calibration", "n_calib", "image_steps", "n_eval", "lo_maps", "alignment",
           "wall_s", "device", "weights_id", "stale", "behaviour", "gallery", "timestamp", "config_key", "config",
           "ablation"]
NESTED = ("quant_metrics", "method_options", "quant_options", "task_options", "versions")
SORT = ["model", "layout", "method", "precision", "seed", "config_key"]
GROUP = ["task", "model", "layout", "method", "precision", "config", "ablation", "metric", "weights_id"]


PRECISIONS = ["W8A8", "W6A6", "W4A8", "W4A4", "MP-W4A8"]  # the papers' column order


def precision_order(precisions: set[str]) -> list[str]:
    """The papers' order first, any other precision after it."""
    return [p for p in PRECISIONS if p in precisions] + sorted(set(precisions) - set(PRECISIONS))


STALE_MARK = "†"
STALE_NOTE = "today's code computes something else on the path of a seed (clamp-bench fingerprint)"


def row(record: dict, gallery: str | None = None, stale: bool = False, behaviour: str | None = None,
        deployed: dict | None = None) -> dict:
    """One CSV row from a stored cell record (metrics in percent); ``gallery``: the path of its
    synthetic images' PNG grid, relative to the results folder; ``behaviour``: the fingerprint of
    its path at the code that computed it; ``deployed``: its deployment check (benchmarks/deploy.py:
    top-1 on ONNX Runtime's integer kernels, its difference to fake quantization on the same
    images, and the FP32 session's latency over the integer one's at batch 32)."""
    cfg, metric, comp = record["config"], record["metric"], record["compression"]
    fp, quant = record["fp"][metric], record["quant"][metric]
    precision = config_precision(cfg)
    def optional(key: str) -> float | None:  # absent from records computed before it was measured
        return round(comp[key], 3) if key in comp else None

    return {
        "task": cfg["task"], "model": cfg["model"], "method": cfg["method"], "precision": precision,
        "layout": cfg["quant_options"]["layout"],
        "w_bits": cfg["w_bits"], "a_bits": cfg["a_bits"], "mean_w_bits": round(comp["mean_w_bits"], 3),
        "mean_a_bits": round(comp["mean_a_bits"], 3), "mean_w_bits_plain": optional("mean_w_bits_plain"),
        "mean_a_bits_weighted": optional("mean_a_bits_weighted"),
        "compression_ratio": round(comp["compression_ratio"], 3), "gbops": optional("gbops"),
        "size_mb": round(comp["size_mb"], 4), "n_params": comp["n_params"], "metric": metric,
        "fp_value": round(fp, 3), "quant_value": round(quant, 3), "delta": round(quant - fp, 3),
        **_deployed(deployed), "seed": cfg["seed"],
        "calibration": record["report"]["calibration"], "n_calib": record["report"]["n_calib"],
        "image_steps": record["report"].get("image_steps"),
        "n_eval": record["quant"]["n_eval"], "lo_maps": record["report"].get("lo_maps"),
        "alignment": record["report"].get("alignment"),
        "wall_s": record["wall_s"], "device": record["device"], "weights_id": record.get("weights_id"),
        "stale": stale, "behaviour": behaviour, "gallery": gallery, "timestamp": record["timestamp"],
        "config_key": record["key"],
        "config": _config_text(cfg), "ablation": _config_text(path_of(cfg)),
        "quant_metrics": {k: round(v, 3) for k, v in record["quant"].items() if k != "n_eval"},
        "method_options": cfg["method_options"],
        "quant_options": {k: v for k, v in cfg["quant_options"].items() if k != "layout"},
        "task_options": cfg.get("task_options", {}),
        "versions": dict(part.partition("=")[::2] for part in record["versions"].split()),
    }


def _deployed(check: dict | None) -> dict:
    if check is None:
        return {"int_top1": None, "int_vs_fake": None, "int_speedup": None}
    return {"int_top1": round(check["int"], 3), "int_vs_fake": round(check["int_vs_fake"], 3),
            "int_speedup": round(check["speedup"]["b32"], 3)}


def _config_text(cfg: dict) -> str:
    """Method and quantizer options (the rest has columns of its own), compact and stable; of a
    path (fingerprint.path_of), the options that select other code: empty for a method at its
    defaults, whatever its budget."""
    parts = [f"{k}={v}" for k, v in sorted(cfg["method_options"].items())]
    parts += [f"quant.{k}={v}" for k, v in sorted(cfg["quant_options"].items()) if k != "layout"]
    parts += [f"task.{k}={v}" for k, v in sorted(cfg.get("task_options", {}).items())]
    return ";".join(parts)


def gallery(record: dict, root: Path) -> str | None:
    """The PNG grid of a cell's synthetic images under <root>/galleries/, named like the image
    cache entry (cells on the same images share it): copied there from the cache of the machine
    that computed the cell, the first time the leaderboard sees it."""
    images = record["report"].get("images")
    if not images:
        return None
    source = Path(images).with_suffix(".png")
    target = root / "galleries" / source.name
    if not target.is_file() and source.is_file():
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    return str(target.relative_to(root)) if target.is_file() else None


def table(store: ResultStore, task: str, fingerprints: Fingerprints | None = None) -> pd.DataFrame:
    """One flat row per good record of ``task`` from a clean commit, stale ones marked."""
    records = [r for r in store.records(task) if r["status"] == "ok" and not is_dirty(r)]
    fps = fingerprints or Fingerprints(store.root)
    stale = fps.stale(records)
    rows = [row(r, gallery(r, store.root), stale[r["key"]], fps.of_record(r), deploy.load(store, r)) for r in records]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.json_normalize(rows, sep=".", max_level=1)
    flat = sorted(c for c in frame.columns if c.startswith(tuple(f"{n}." for n in NESTED)))
    frame = frame[COLUMNS + flat]
    return frame.sort_values(SORT, kind="stable").reset_index(drop=True)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of every (model, method, precision, options, weights): seeds run
    on other weights of the same model (a re-converted backbone, say) are never averaged together."""
    grouped = frame.groupby(GROUP, sort=True, dropna=False)
    out = grouped.agg(fp_value=("fp_value", "first"), quant_mean=("quant_value", "mean"),
                      quant_std=("quant_value", "std"), quant_min=("quant_value", "min"),
                      quant_max=("quant_value", "max"), seeds=("seed", "count"),
                      mean_w_bits=("mean_w_bits", "mean"), mean_a_bits=("mean_a_bits", "mean"),
                      mean_w_bits_plain=("mean_w_bits_plain", "mean"),
                      compression_ratio=("compression_ratio", "mean"), gbops=("gbops", "mean"),
                      stale=("stale", "sum")).reset_index()
    out["delta_mean"] = out["quant_mean"] - out["fp_value"]
    return out.round(3)


def options_suffix(frame: pd.DataFrame) -> pd.Series:
    """" (options)" after a row's method where it ran with non-default options, else ""."""
    return frame["config"].map(lambda c: f" ({c})" if c else "")


def _weights_suffix(summ: pd.DataFrame) -> pd.Series:
    """" [weights ID]" where a model's rows ran on more than one set of weights, else ""."""
    ids = summ["weights_id"].astype(str)
    several = ids.groupby(summ["model"]).transform("nunique") > 1
    return ids.where(several, "").map(lambda w: f" [weights {w}]" if w else "")


def markdown(summ: pd.DataFrame) -> str:
    """One line per (model, method, options): the metric at each precision, mean ± std over seeds."""
    if summ.empty:
        return "(no finished cells)\n"
    cell = summ.apply(lambda r: f"{r.quant_mean:.2f}" + (f" ± {r.quant_std:.2f}" if r.seeds > 1 else "")
                      + (f" {STALE_MARK}" if r.stale else ""), axis=1)
    wide = summ.assign(cell=cell, method=summ["method"] + options_suffix(summ) + _weights_suffix(summ))
    wide = wide.pivot_table(index=["model", "fp_value", "layout", "method"], columns="precision", values="cell",
                            aggfunc="first").reset_index().fillna("")
    index = ["model", "fp_value", "layout", "method"]
    wide = wide[index + precision_order(set(wide.columns) - set(index))]
    note = f"\n{STALE_MARK} stale: {STALE_NOTE}\n" if summ["stale"].any() else ""
    return pipe_table(wide) + note


def pipe_table(frame: pd.DataFrame) -> str:
    """A markdown pipe table of ``frame``, values as they print."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)) + "\n"


def cells_table(store: ResultStore, cells: list) -> str:
    """The markdown tables of just these cells (a suite's), stale ones marked, and where the web
    leaderboard of every cell is."""
    keys = {c.key for c in cells}
    tables = []
    for task in sorted({c.task for c in cells}):
        frame = table(store, task)
        tables.append(markdown(summary(frame[frame["config_key"].isin(keys)])))
    site = store.root / "site" / "index.html"
    return "\n".join(tables) + f"\nthe web leaderboard of every cell: {site} (`clamp-bench leaderboard` rebuilds it)"


README = Path(__file__).resolve().parent.parent / "README.md"
MARKERS = ("<!-- leaderboard: generated by `clamp-bench leaderboard`, do not edit -->", "<!-- leaderboard: end -->")
TASK_TITLES = {"classification": "top-1 %", "detection": "box mAP %", "segmentation": "mIoU %"}


def headline(store: ResultStore, tasks: tuple[str, ...]) -> str:
    """The headline tables: per task, every method at its default options under the reference
    layout, mean ± std over seeds (ablations, the inputs layout and every cell: results/<task>.md)."""
    return "\n".join(f"**{task}** ({TASK_TITLES.get(task, 'metric')}):\n\n"
                     + markdown(main_rows(summary(table(store, task)))) for task in tasks)


def main_rows(summ: pd.DataFrame) -> pd.DataFrame:
    """The rows of the headline tables: default options (a budget is no option), reference layout."""
    return summ[(summ["layout"] == "reference") & (summ["ablation"] == "")]


def write_readme(store: ResultStore, tasks: tuple[str, ...], path: Path = README) -> Path | None:
    """Replace the README's generated region (between ``MARKERS``) with the headline tables; a
    README without the markers is left alone."""
    text = path.read_text() if path.is_file() else ""
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        return None
    new = text[:start + len(MARKERS[0])] + "\n\n" + headline(store, tasks) + "\n" + text[end:]
    if new != text:
        atomic_write_text(path, new)
    return path


def plot(summ: pd.DataFrame, path: Path) -> None:
    """Metric against compression ratio, one panel per model, one colour per method (options in
    the label). Fixed precisions are joined per activation bit-width (solid A8, dashed A6, dotted
    A4); mixed precision is a star. Error bars: std over seeds. FP is the dashed black line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summ.empty:
        return
    summ = summ.assign(label=summ["method"] + options_suffix(summ)
                       + summ["layout"].map(lambda layout: "" if layout == "reference" else f" [{layout}]"))
    models = sorted(summ["model"].unique())
    colours = {label: f"C{i % 10}" for i, label in enumerate(sorted(summ["label"].unique()))}
    styles = {8: "-", 6: "--", 4: ":"}
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sub = summ[summ["model"] == model]
        for (label, a_bits, mixed), m in sub.groupby(["label", "mean_a_bits", sub["precision"].str.startswith("MP-")]):
            m = m.sort_values("compression_ratio")
            ax.errorbar(m["compression_ratio"], m["quant_mean"], yerr=m["quant_std"].fillna(0), capsize=3,
                        color=colours[label], marker="*" if mixed else "o", markersize=10 if mixed else 5,
                        linestyle="none" if mixed else styles.get(round(a_bits), "-."),
                        label=f"{label} {'MP' if mixed else f'A{round(a_bits)}'}")
        ax.axhline(sub["fp_value"].iloc[0], color="k", linestyle="--", label="FP")
        ax.set(title=model, xlabel="compression ratio", ylabel=sub["metric"].iloc[0])
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))
    plt.close(fig)


def plot_mixed_bits(frame: pd.DataFrame, store: ResultStore, path: Path) -> None:
    """Per-layer weight and activation bits of every mixed-precision row, from the quantizer
    state stored beside its record (one panel each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixed = frame[frame["precision"].str.startswith("MP-")].sort_values(["model", "method", "config", "seed"])
    mixed = mixed.assign(label=mixed["method"] + options_suffix(mixed))
    if mixed.empty:
        return
    fig, axes = plt.subplots(len(mixed), 1, figsize=(12, 2.2 * len(mixed)), squeeze=False)
    for ax, row in zip(axes[:, 0], mixed.itertuples(), strict=True):
        bits = store.bits(row.task, row.config_key)
        for kind, marker in (("weight", "s"), ("activation", "o")):
            names = [n for n in bits if n.endswith(".weight") == (kind == "weight")]
            ax.plot(range(len(names)), [bits[n] for n in names], marker=marker, linestyle="none", label=kind)
        ax.set(ylim=(1.5, 8.5), ylabel="bits",
               title=f"{row.model} {row.label} {row.precision} seed {row.seed}: W{row.mean_w_bits_plain:.1f}/"
                     f"A{row.mean_a_bits:.1f} (plain means), {row.quant_value:.2f} {row.metric}")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("quantizer, by name (weights and activations separately)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None}))
    plt.close(fig)


def deployment_markdown(frame: pd.DataFrame) -> str:
    """The rows with a deployment check (clamp-bench export): fake-quant and integer-kernel top-1
    on the same images, and the FP32 session's latency over the integer one's at batch 32."""
    rows = frame[frame["int_top1"].notna()] if "int_top1" in frame else frame.iloc[:0]
    if rows.empty:
        return ""
    table_ = rows.assign(fake=rows["int_top1"] - rows["int_vs_fake"])[
        ["model", "method", "precision", "seed", "quant_value", "fake", "int_top1", "int_vs_fake", "int_speedup"]]
    table_ = table_.rename(columns={"quant_value": "fake (row's eval set)", "fake": "fake (1,000 images)",
                                    "int_top1": "ONNX Runtime int (same images)", "int_vs_fake": "int - fake",
                                    "int_speedup": "speed-up vs FP32 (batch 32)"})
    return ("\n## On integer kernels (ONNX Runtime CPU; `clamp-bench suite deploy`)\n\n"
            + pipe_table(table_.round(2)))


def write_csv(store: ResultStore, task: str) -> Path:
    """Rebuild results/<task>.csv, <task>_summary.csv, <task>.md and plots/<task>.png, under a
    lock so that concurrent runs never interleave their rebuilds."""
    with store.lock("leaderboard"):
        return _write_csv(store, task)


def _write_csv(store: ResultStore, task: str) -> Path:
    frame = table(store, task)
    path = store.root / f"{task}.csv"
    atomic_write_text(path, frame.to_csv(index=False))
    summ = summary(frame)
    atomic_write_text(store.root / f"{task}_summary.csv", summ.to_csv(index=False))
    atomic_write_text(store.root / f"{task}.md", f"# {task}\n\n## Every method at its default options, reference "
                      f"layout (the README's table)\n\n{markdown(main_rows(summ))}\n## Every row: ablations and the "
                      f"inputs layout too\n\n{markdown(summ)}{deployment_markdown(frame)}")
    plot(summ, store.root / "plots" / f"{task}.png")
    plot_mixed_bits(frame, store, store.root / "plots" / f"{task}_mp_bits.png")
    return path
