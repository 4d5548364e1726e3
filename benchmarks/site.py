"""The static web leaderboard: results/site/index.html, one section per task, openable from disk.

Tables are DataTables through itables (sortable, searchable), plots are plotly; both libraries'
offline modes inline their scripts, so viewing needs no network. Each row links a detail page
(results/site/cells/<key>.html) with its configuration, versions, synthetic images and per-layer
bits. Rebuilt by ``clamp-bench leaderboard``; the same records give the same bytes.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import plotly.express as px
from itables import to_html_datatable
from itables.javascript import generate_init_offline_itables_html
from itables.options import dt_bundle

from benchmarks import deploy, leaderboard
from benchmarks.store import ResultStore
from clamp.io import atomic_write_text

# what a researcher reads first, on the left
ROW_COLUMNS = ["model", "method", "precision", "quant_value", "stale", "seed", "layout", "ablation", "delta",
               "fp_value", "metric", "mean_w_bits", "mean_a_bits", "compression_ratio", "gbops", "wall_s", "config",
               "weights_id", "cell"]
MISSING = "not run"


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """No NaN on a page: an absent value is empty."""
    return frame.astype(object).where(frame.notna(), "")


def _mean(r: pd.Series) -> str:
    text = f"{r.quant_mean:.2f}" + (f" ± {r.quant_std:.2f}" if r.seeds > 1 else "") + f" (n={r.seeds})"
    if r.precision.startswith("MP-"):
        text += f" W{r.mean_w_bits_plain:.1f}/A{r.mean_a_bits:.1f}" if pd.notna(r.mean_w_bits_plain) else ""
    return text + (f" {leaderboard.STALE_MARK}" if r.stale else "")


def _by_precision(summ: pd.DataFrame) -> pd.DataFrame:
    """One summary row per precision (the one with most seeds where budgets or weights differ)."""
    return summ.sort_values("seeds", ascending=False, kind="stable").drop_duplicates("precision").set_index(
        "precision", drop=False)


def _paper_table(summ: pd.DataFrame, published: pd.DataFrame, table_id: str) -> str:
    """One model as the papers print it: a row per method at its default options (reference
    layout), a column per precision, mean ± std (n seeds), the best of each column in bold, the
    published number beside ours where a paper reports one, stale and missing cells marked."""
    columns = leaderboard.precision_order(set(summ["precision"]))
    best = summ.groupby("precision")["quant_mean"].max()
    rows = []
    for method, sub in summ.groupby("method", sort=True):
        by = _by_precision(sub)
        row = {"method": method}
        for p in columns:
            if p not in by.index:
                row[p] = MISSING
                continue
            r = by.loc[p]
            text = html.escape(_mean(r))
            row[p] = f"<b>{text}</b>" if r.quant_mean == best[p] else text
            if len(published):  # a model a paper reports on: its number beside ours, "-" where it has none
                paper = published[(published["method"] == method) & (published["precision"] == p)]
                row[p] += f" [paper {paper['published'].iloc[0]:.2f}]" if len(paper) else " [paper -]"
        rows.append(row)
    return _table(pd.DataFrame(rows), table_id)


def _ablation_table(summ: pd.DataFrame, table_id: str) -> str:
    """CLAMP-ViT's ablations as the paper lays them out: a row per switch, its delta against the
    full method per precision."""
    clamp = summ[summ["method"] == "clamp-vit"]
    full = _by_precision(clamp[clamp["ablation"] == ""])["quant_mean"]
    rows = []
    for switch, sub in clamp[clamp["ablation"] != ""].groupby("ablation", sort=True):
        by = _by_precision(sub)
        rows.append({"switch": switch, **{p: (f"{by.loc[p, 'quant_mean'] - full[p]:+.2f} ({_mean(by.loc[p])})"
                                             if p in by.index and p in full.index else MISSING)
                                         for p in leaderboard.precision_order(set(clamp["precision"]))}})
    return _table(pd.DataFrame(rows), table_id) if rows else "<p>no ablation rows</p>"


def _table(frame: pd.DataFrame, table_id: str) -> str:
    return to_html_datatable(frame, table_id=table_id, connected=False, allow_html=True, maxBytes=0,
                             classes="display compact", pageLength=25, showIndex=False)


def _plot(summ: pd.DataFrame, x: str, name: str) -> str:
    """One model's methods (default options) against ``x``: one colour per method, hover names the cell."""
    fig = px.scatter(summ.sort_values("method"), x=x, y="quant_mean", error_y="quant_std", color="method",
                     hover_data=["precision", "seeds", "config"], height=380)
    return fig.to_html(include_plotlyjs=False, full_html=False, div_id=f"plot-{x}-{name}")


def _json(value: object) -> str:
    return html.escape(json.dumps(value, indent=1, sort_keys=True))


def _bits_svg(bits: dict[str, int]) -> str:
    """Per-layer bits as an inline SVG bar plot (weights dark, activations light, in model order;
    32 = left in FP, drawn at 16), each bar titled with its quantizer."""
    width, height = 4, 80
    bars = []
    for i, (name, b) in enumerate(bits.items()):
        h = height * min(b, 16) / 16
        colour = "#1f4e79" if name.endswith(".weight") else "#9dc3e6"
        bars.append(f'<rect x="{i * width}" y="{height - h:.1f}" width="{width - 1}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{html.escape(name)}: {b} bits</title></rect>')
    return ('<p>weights dark, activations light; full height = 16 bits</p>'
            f'<svg class="bits" width="{len(bits) * width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'{"".join(bars)}</svg>')


def _alignment_svg(children: list[list[float]]) -> str:
    """The search's children as an inline SVG scatter: fitness change (x) against held-out loss
    change (y), each axis symmetric about 0; a child in the lower left improved both."""
    size, pad = 240, 8
    fx = max(abs(c[1]) for c in children) or 1.0
    hy = max(abs(c[2]) for c in children) or 1.0
    def at(v: float, m: float) -> float:
        return pad + (size - 2 * pad) * (v / m + 1) / 2
    dots = "".join(f'<circle cx="{at(f, fx):.1f}" cy="{size - at(h, hy):.1f}" r="2" fill="#1f4e79">'
                   f'<title>block {b}: fitness {f:+.3g}, held-out {h:+.3g}</title></circle>' for b, f, h in children)
    axes = (f'<line x1="{pad}" y1="{size / 2}" x2="{size - pad}" y2="{size / 2}" stroke="#999"/>'
            f'<line x1="{size / 2}" y1="{pad}" x2="{size / 2}" y2="{size - pad}" stroke="#999"/>')
    return (f'<p>each child of the search: its fitness change (x, ±{fx:.3g}) and its held-out loss change on real '
            f'training images (y, ±{hy:.3g}) against its parent</p><svg class="alignment" width="{size}" '
            f'height="{size}" xmlns="http://www.w3.org/2000/svg">{axes}{dots}</svg>')


def _cell_page(record: dict, row: pd.Series, site: Path, store: ResultStore, siblings: pd.DataFrame) -> None:
    """The detail page of one row: stale flag, wall time, its seed's siblings, configuration,
    versions, report, images, per-layer bits, a link back."""
    title = f"{row['model']} · {row['method']} · {row['precision']} · seed {row['seed']}"
    stale = (f"<p><b>stale</b>: {html.escape(leaderboard.STALE_NOTE)}</p>" if row["stale"]
             else "<p>current: today's code computes the same on its path</p>")
    others = " · ".join(f'<a href="{k}.html">seed {s}: {v:.2f}</a>'
                        for k, s, v in siblings[["config_key", "seed", "quant_value"]].itertuples(index=False)
                        if k != row["config_key"])
    parts = ['<p><a href="../index.html">back to the leaderboard</a></p>', f"<h1>{html.escape(title)}</h1>",
             f"<p>{row['metric']}: {row['quant_value']:.2f} (FP {row['fp_value']:.2f}), layout {row['layout']}, "
             f"wall time {row['wall_s']:.0f} s on {html.escape(str(record['device']))}</p>", stale,
             f"<p>the other seeds: {others or 'none'}</p>",
             "<h2>configuration</h2><pre>" + _json(record["config"]) + "</pre>",
             "<h2>versions</h2><pre>" + html.escape(record["versions"]) + "</pre>",
             "<h2>report</h2><pre>" + _json({k: v for k, v in record["report"].items()
                                             if k != "alignment_children"}) + "</pre>"]
    check = deploy.load(store, record)
    if check is not None:
        parts.append("<h2>on integer kernels (ONNX Runtime)</h2><pre>" + html.escape(deploy.summary(check)) + "</pre>"
                     + "<p>sites left as float quantize-dequantize: "
                     + html.escape(", ".join(check["fusion"]["float_sites"]) or "none") + "</p>")
    children = record["report"].get("alignment_children")
    if children:
        parts.append(f"<h2>fitness against held-out loss (rank correlation {record['report']['alignment']})</h2>"
                     + _alignment_svg(children))
    if isinstance(row["gallery"], str):
        parts.append(f'<h2>synthetic images</h2><img class="gallery" src="../../{row["gallery"]}">')
    bits = store.bits(row["task"], record["key"])
    if bits is not None:
        parts.append("<h2>bits per quantizer</h2>" + _bits_svg(bits)
                     + pd.Series(bits, name="bits").to_frame().to_html())
    page = "<!doctype html><meta charset='utf-8'><title>cell</title><body>" + "\n".join(parts) + "</body>"
    atomic_write_text(site / "cells" / f"{record['key']}.html", page)


def _section(store: ResultStore, task: str, site: Path) -> str:
    frame = leaderboard.table(store, task)
    if frame.empty:
        return f"<h2 id='{task}'>{task}</h2><p>no finished cells</p>"
    records = {r["key"]: r for r in store.records(task)}
    group = ["model", "method", "precision", "layout", "config", "weights_id"]
    for _, row in frame.iterrows():
        siblings = frame[(frame[group].astype(str) == row[group].astype(str)).all(axis=1)]
        _cell_page(records[row["config_key"]], row, site, store, siblings)
    rows = frame.assign(cell=frame["config_key"].map(lambda k: f'<a href="cells/{k}.html">{k}</a>'))[ROW_COLUMNS]
    summ = leaderboard.summary(frame)
    reference = summ[summ["layout"] == "reference"]
    path = store.root / f"published_vs_reproduced_{task}.csv"
    published = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["model", "method", "precision"])
    models = sorted(reference["model"].unique())
    options = "".join(f"<option value='{task}-{i}'>{html.escape(m)}</option>" for i, m in enumerate(models))
    parts = [f"<h2 id='{task}'>{task}: {frame['metric'].iloc[0]} (%)</h2>",
             f"<p>model: <select class='model-select' data-task='{task}'>{options}</select> "
             f"(bold: the best of a column; {leaderboard.STALE_MARK}: stale)</p>"]
    for i, model in enumerate(models):
        sub = reference[reference["model"] == model]
        main = sub[sub["ablation"] == ""]
        hidden = "" if i == 0 else " style='display:none'"
        fp = sub["fp_value"].iloc[0]
        parts += [f"<div class='model-panel' id='{task}-{i}'{hidden}>",
                  f"<h3>{html.escape(model)} (FP {fp:.2f})</h3>",
                  _paper_table(main, published[published["model"] == model], f"paper-{task}-{i}"),
                  "<h4>CLAMP-ViT ablations (delta against the full method)</h4>",
                  _ablation_table(sub, f"ablation-{task}-{i}"),
                  _plot(main, "compression_ratio", f"{task}-{i}"),
                  *([_plot(main.dropna(subset=["gbops"]), "gbops", f"{task}-{i}")] if main["gbops"].notna().any()
                    else []), "</div>"]
    inputs = summ[summ["layout"] == "inputs"]
    if len(inputs):
        shown = inputs.assign(mean=inputs.apply(_mean, axis=1))[["model", "method", "config", "precision", "mean"]]
        parts += ["<details><summary>the <code>inputs</code> layout (the project's first quantizer layout)</summary>",
                  _table(_shown(shown), f"inputs-{task}"), "</details>"]
    if len(published):
        parts += ["<h3>published vs reproduced (ImageNet; the micro and pretrained tiers are not compared)</h3>",
                  _table(_shown(published), f"published-{task}")]
    parts += ["<h3>every cell</h3>", _table(_shown(rows), f"rows-{task}")]
    return "\n".join(parts)


SELECT_SCRIPT = """<script>
document.querySelectorAll('select.model-select').forEach(function (select) {
  select.addEventListener('change', function () {
    document.querySelectorAll('div.model-panel[id^="' + select.dataset.task + '-"]').forEach(function (panel) {
      panel.style.display = panel.id === select.value ? '' : 'none';
      window.dispatchEvent(new Event('resize'));
    });
  });
});
</script>"""


def build(store: ResultStore, tasks: tuple[str, ...]) -> Path:
    """Write <results>/site/index.html (and a page per cell); returns the index path."""
    site = store.root / "site"
    sections = [_section(store, task, site) for task in tasks]
    nav = " · ".join(f"<a href='#{t}'>{t}</a>" for t in tasks)
    from plotly.offline import get_plotlyjs
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>clamp-vit-bench leaderboard</title>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + generate_init_offline_itables_html(dt_bundle)
            + f"<h1>clamp-vit-bench leaderboard</h1><p>{nav}</p>" + "\n".join(sections) + SELECT_SCRIPT
            + "</body></html>")
    path = site / "index.html"
    atomic_write_text(path, page)
    return path
