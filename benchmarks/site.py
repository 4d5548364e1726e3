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

from benchmarks import leaderboard
from benchmarks.store import ResultStore
from clamp.cache import atomic_write_text

ROW_COLUMNS = ["model", "method", "precision", "layout", "seed", "quant_value", "delta", "fp_value", "metric",
               "mean_w_bits", "mean_a_bits", "compression_ratio", "gbops", "config", "weights_id", "stale", "cell"]
SUMMARY_COLUMNS = ["model", "method", "precision", "layout", "config", "seeds", "quant", "delta_mean", "fp_value",
                   "compression_ratio", "weights_id"]


def _table(frame: pd.DataFrame, table_id: str) -> str:
    return to_html_datatable(frame, table_id=table_id, connected=False, allow_html=True, maxBytes=0,
                             classes="display compact", pageLength=25, showIndex=False)


def _plot(summ: pd.DataFrame, x: str) -> str:
    summ = summ.assign(label=summ["method"] + " " + summ["layout"] + leaderboard.options_suffix(summ))
    fig = px.scatter(summ, x=x, y="quant_mean", error_y="quant_std", color="label", symbol="precision",
                     facet_col="model", hover_data=["precision", "seeds"], height=420)
    return fig.to_html(include_plotlyjs=False, full_html=False, div_id=f"plot-{x}-{summ['task'].iloc[0]}")


def _json(value: object) -> str:
    return html.escape(json.dumps(value, indent=1, sort_keys=True))


def _cell_page(record: dict, row: pd.Series, site: Path, store: ResultStore) -> None:
    """The detail page of one row: configuration, versions, report, images, per-layer bits."""
    title = f"{row['model']} · {row['method']} · {row['precision']} · seed {row['seed']}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{row['metric']}: {row['quant_value']:.2f} (FP {row['fp_value']:.2f}), layout {row['layout']}</p>",
             "<h2>configuration</h2><pre>" + _json(record["config"]) + "</pre>",
             "<h2>versions</h2><pre>" + html.escape(record["versions"]) + "</pre>",
             "<h2>report</h2><pre>" + _json(record["report"]) + "</pre>"]
    if isinstance(row["gallery"], str):
        parts.append(f'<h2>synthetic images</h2><img class="gallery" src="../../{row["gallery"]}">')
    bits = store.bits(row["task"], record["key"])
    if bits is not None:
        parts.append("<h2>bits per quantizer</h2>" + pd.Series(bits, name="bits").to_frame().to_html())
    page = "<!doctype html><meta charset='utf-8'><title>cell</title><body>" + "\n".join(parts) + "</body>"
    atomic_write_text(site / "cells" / f"{record['key']}.html", page)


def _section(store: ResultStore, task: str, site: Path) -> str:
    frame = leaderboard.table(store, task)
    if frame.empty:
        return f"<h2 id='{task}'>{task}</h2><p>no finished cells</p>"
    records = {r["key"]: r for r in store.records(task)}
    for _, row in frame.iterrows():
        _cell_page(records[row["config_key"]], row, site, store)
    rows = frame.assign(cell=frame["config_key"].map(lambda k: f'<a href="cells/{k}.html">{k}</a>'))[ROW_COLUMNS]
    summ = leaderboard.summary(frame)
    shown = summ.assign(quant=summ.apply(lambda r: f"{r.quant_mean:.2f} ± {r.quant_std:.2f}" if r.seeds > 1
                                         else f"{r.quant_mean:.2f}", axis=1))[SUMMARY_COLUMNS]
    parts = [f"<h2 id='{task}'>{task}: {frame['metric'].iloc[0]} (%)</h2>",
             "<h3>mean ± std over seeds</h3>", _table(shown, f"summary-{task}"),
             "<h3>every cell</h3>", _table(rows, f"rows-{task}"),
             "<h3>metric against compression and BOPS</h3>", _plot(summ, "compression_ratio")]
    if summ["gbops"].notna().any():
        parts.append(_plot(summ.dropna(subset=["gbops"]), "gbops"))
    published = store.root / f"published_vs_reproduced_{task}.csv"
    if published.is_file():
        parts += ["<h3>published vs reproduced</h3>", _table(pd.read_csv(published), f"published-{task}")]
    return "\n".join(parts)


def build(store: ResultStore, tasks: tuple[str, ...]) -> Path:
    """Write <results>/site/index.html (and a page per cell); returns the index path."""
    site = store.root / "site"
    sections = [_section(store, task, site) for task in tasks]
    nav = " · ".join(f"<a href='#{t}'>{t}</a>" for t in tasks)
    from plotly.offline import get_plotlyjs
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>clamp-vit-bench leaderboard</title>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + generate_init_offline_itables_html(dt_bundle)
            + f"<h1>clamp-vit-bench leaderboard</h1><p>{nav}</p>" + "\n".join(sections) + "</body></html>")
    path = site / "index.html"
    atomic_write_text(path, page)
    return path
