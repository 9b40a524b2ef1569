"""Pareto and hypervolume plots: an interactive HTML page (no dependencies) and PNGs (matplotlib)."""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Callable

import polars as pl

logger = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Pareto front: {title}</title>
<style>
body {{ font: 13px sans-serif; margin: 12px; }} svg {{ border: 1px solid #ccc; background: #fff; }}
.front {{ fill: #d62728; }} .tied {{ fill: #ff7f0e; }} .rest {{ fill: #1f77b4; opacity: .55; }} a:hover circle {{ stroke: #000; stroke-width: 2; }}
table {{ border-collapse: collapse; margin-top: 10px; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; }}
</style></head><body>
<h3>Pareto front of sweep <code>{title}</code></h3>
<p>x: <select id="x"></select> y: <select id="y"></select>
<span style="color:#d62728">&#9679; rank 0 (front)</span> <span style="color:#ff7f0e">&#9679; tied with the front</span>
<span style="color:#1f77b4">&#9679; dominated</span>; bars: 95% intervals over seeds (none with one seed).
Click a point to open its MLflow run.</p>
<svg id="plot" width="720" height="480"></svg>
<table id="front"></table>
<script>
const DATA = {data};  // one entry per point; runs = its MLflow run ids (one per seed)
const OBJ = {objectives};
const W = 720, H = 480, M = 60;
const sx = document.getElementById('x'), sy = document.getElementById('y');
OBJ.forEach((o, i) => {{ for (const s of [sx, sy]) {{ const e = document.createElement('option');
  e.value = i; e.textContent = o[0] + ' (' + o[1] + ')'; s.appendChild(e); }} }});
sx.value = OBJ.length > 1 ? 1 : 0; sy.value = 0;
function draw() {{
  const xi = +sx.value, yi = +sy.value, svg = document.getElementById('plot');
  const ends = (i) => DATA.flatMap(d => [d.values[i] - (d.half[i] || 0), d.values[i] + (d.half[i] || 0)]);
  const xs = ends(xi), ys = ends(yi);  // the axes cover the intervals too
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const px = v => M + (W - 2 * M) * (x1 > x0 ? (v - x0) / (x1 - x0) : .5);
  const py = v => H - M - (H - 2 * M) * (y1 > y0 ? (v - y0) / (y1 - y0) : .5);
  let s = `<line x1="${{M}}" y1="${{H-M}}" x2="${{W-M}}" y2="${{H-M}}" stroke="#888"/>` +
          `<line x1="${{M}}" y1="${{M}}" x2="${{M}}" y2="${{H-M}}" stroke="#888"/>` +
          `<text x="${{W/2}}" y="${{H-20}}" text-anchor="middle">${{OBJ[xi][0]}}</text>` +
          `<text x="15" y="${{H/2}}" transform="rotate(-90 15 ${{H/2}})" text-anchor="middle">${{OBJ[yi][0]}}</text>` +
          `<text x="${{M}}" y="${{H-M+15}}">${{x0.toPrecision(4)}}</text><text x="${{W-M}}" y="${{H-M+15}}" text-anchor="end">${{x1.toPrecision(4)}}</text>` +
          `<text x="${{M-5}}" y="${{H-M}}" text-anchor="end">${{y0.toPrecision(4)}}</text><text x="${{M-5}}" y="${{M}}" text-anchor="end">${{y1.toPrecision(4)}}</text>`;
  for (const d of DATA) {{
    const tip = d.name + ' (rank ' + d.rank + ')\\n' + OBJ.map((o, i) => o[0] + ' = ' + d.values[i]).join('\\n') + '\\n' + d.point;
    const hx = d.half[xi], hy = d.half[yi];
    if (hx) s += `<line x1="${{px(d.values[xi] - hx)}}" x2="${{px(d.values[xi] + hx)}}" y1="${{py(d.values[yi])}}" y2="${{py(d.values[yi])}}" stroke="#999"/>`;
    if (hy) s += `<line y1="${{py(d.values[yi] - hy)}}" y2="${{py(d.values[yi] + hy)}}" x1="${{px(d.values[xi])}}" x2="${{px(d.values[xi])}}" stroke="#999"/>`;
    s += `<a href="${{d.url}}" target="_top"><circle cx="${{px(d.values[xi])}}" cy="${{py(d.values[yi])}}" r="6" class="${{d.rank === 0 ? 'front' : d.tied ? 'tied' : 'rest'}}"><title>${{tip}}</title></circle></a>`;
  }}
  svg.innerHTML = s;
}}
sx.onchange = draw; sy.onchange = draw; draw();
const t = document.getElementById('front');
const fmt = (v, h) => v.toPrecision(5) + (h ? ' &plusmn; ' + h.toPrecision(2) : '');
t.innerHTML = '<tr><th>run</th><th>rank</th><th>n</th>' + OBJ.map(o => '<th>' + o[0] + '</th>').join('') + '<th>point</th><th>MLflow runs (seeds)</th></tr>' +
  DATA.filter(d => d.rank === 0 || d.tied).map(d => '<tr><td><a target="_top" href="' + d.url + '">' + d.name + '</a></td><td>' +
  (d.rank === 0 ? '0' : d.rank + ' (tied)') + '</td><td>' + d.n + '</td>' +
  d.values.map((v, i) => '<td>' + fmt(v, d.half[i]) + '</td>').join('') + '<td>' + d.point + '</td><td>' + d.runs.join(' ') + '</td></tr>').join('');
</script></body></html>
"""


def pareto_html(table: pl.DataFrame, objectives: list[tuple[str, str]], title: str,
                run_link: Callable[[str], str]) -> str:
    """Self-contained page: scatter of any two objectives, points link to their runs (``run_link``:
    a run id -> its URL in the tracking UI, ``RunStore.run_link``)."""
    data = []
    for row in table.iter_rows(named=True):
        run_ids = row.get("run_ids") or [row.get("run_id")]
        run_id = run_ids[0]
        name = f"trial-{row['numbers'][0] if 'numbers' in row else row['number']}"
        data.append({"name": name, "rank": row["pareto_rank"], "point": html.escape(row["point"]), "runs": run_ids,
                     "values": [row[m] for m, _ in objectives], "half": [_half(row, m) for m, _ in objectives],
                     "n": row.get("n", 1), "tied": bool(row.get("tied_with_front")),
                     "url": run_link(run_id) if run_id else ""})
    return _PAGE.format(title=html.escape(title), data=json.dumps(data), objectives=json.dumps(objectives))


def _half(row: dict, metric: str):
    """Half-width of the point's 95% interval of ``metric``; None without one (one seed)."""
    lo, hi = row.get(f"{metric}.lo"), row.get(f"{metric}.hi")
    if lo is None or hi is None or lo != lo or hi != hi:
        return None
    return (hi - lo) / 2


def pareto_png(table: pl.DataFrame, objectives: list[tuple[str, str]], path: Path) -> bool:
    plt = _pyplot()
    if plt is None or len(objectives) < 1 or not len(table):
        return False
    xi = 1 if len(objectives) > 1 else 0
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    tied = pl.col("tied_with_front") if "tied_with_front" in table.columns else pl.lit(False)
    groups = ((pl.col("pareto_rank") == 0, True, "#d62728", "front (rank 0)"),
              ((pl.col("pareto_rank") != 0) & tied, False, "#ff7f0e", "tied with the front"),
              ((pl.col("pareto_rank") != 0) & ~tied, False, "#1f77b4", "dominated"))
    for which, rank0, colour, label in groups:
        part = table.filter(which)
        if not len(part):
            continue
        rows = part.to_dicts()
        xerr = [_half(r, objectives[xi][0]) or 0.0 for r in rows]
        yerr = [_half(r, objectives[0][0]) or 0.0 for r in rows]
        ax.errorbar(part[objectives[xi][0]].to_list(), part[objectives[0][0]].to_list(), xerr=xerr, yerr=yerr,
                    fmt="o", color=colour, label=label, alpha=0.9 if rank0 else 0.6, elinewidth=1, capsize=2)
        if rank0:
            for row in part.iter_rows(named=True):
                num = row["numbers"][0] if "numbers" in row else row["number"]
                ax.annotate(str(num), (row[objectives[xi][0]], row[objectives[0][0]]), fontsize=7)
    ax.set_xlabel(f"{objectives[xi][0]} ({objectives[xi][1]})")
    ax.set_ylabel(f"{objectives[0][0]} ({objectives[0][1]})")
    n = int(table["n"].min()) if "n" in table.columns else 1
    ax.set_title("bars: 95% intervals over seeds" if n > 1 else "one seed per point: no uncertainty estimate",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def hypervolume_png(history: pl.DataFrame, path: Path) -> bool:
    plt = _pyplot()
    if plt is None or not len(history):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].step(history["number"].to_list(), history["hypervolume"].to_list(), where="post")
    axes[0].set_xlabel("trial number")
    axes[1].step(history["trial_steps"].to_list(), history["hypervolume"].to_list(), where="post")
    axes[1].set_xlabel("training steps spent (all trials)")
    for ax in axes:
        ax.set_ylabel("hypervolume")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: PNG plots are skipped (the HTML plot is still written)")
        return None
    return plt
