"""The board as a static site: one folder, no server, no network at view time.

``decoderbench leaderboard --html`` writes ``<out>/site/``:

* ``index.html``: what the board found (the headline paragraph, figure and per-cell table of
  :func:`decoderbench.board.leaderboard.headline`), the summary (each decoder per regime), the per-cell
  spread table with a link to every cell, the figures, the "not converged or imprecise" section, the
  failed or skipped rows, and at the foot the provenance (command, versions, rows digest);
* ``cells.html``: one section per cell (anchor ``#cell-ns<n_s>-nd<n_d>-p<p>``) with its theory, its
  ranked decoders, its unranked and failed rows, and links to the previous, next and summary;
* ``rows.html``: every row in one sortable table, then one section per row (anchor ``#row-<key>``)
  with its parameters, versions, options and the command that made it;
* ``figures/``: the SVG figures (and PNGs) of the Markdown board, the same files.

Tables are sortable by any column and searchable with **itables** (DataTables for pandas) in its
offline mode: the DataTables bundle that the itables package ships is inlined once per page (about
1 MB), so a page opened from disk works without a network. The numbers in the tables are those of
:mod:`decoderbench.board.leaderboard` (same rows, same pooling), kept as numbers so that sorting is numeric.
Figures are the static SVGs the Markdown board has (vector, so they zoom): an interactive plotting
library would add ~5 MB of JavaScript (plotly.js) to every committed site for hover labels that the
sortable tables already give.

Given the same rows the site is byte-identical (table ids are derived from the content).
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
from pathlib import Path

from .._version import __version__
from .leaderboard import (EXACT_REL, HEADLINE_COLUMNS, HEADLINE_FIGURE, REGIME_TEXT, REGIMES, UNCONVERGED_TEXT,
                          aggregate, cell_id, cell_title, headline,
                          decoder_summary, fmt, header, params_of, rows_digest, select_rows, spread_caption,
                          spread_rows, stop_text, unconverged_entries)

SITE_DIR = "site"
PAGES = ("index.html", "cells.html", "rows.html")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 1.2rem 3rem; color: #1d1d1f; line-height: 1.45; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .5rem 0; z-index: 5; }
nav a { margin-right: 1.1rem; }
h1 { font-size: 1.5rem; margin-top: 1.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.prov { color: #555; font-size: .9rem; } .caption { max-width: 70rem; }
.note { color: #8a4b00; } code { background: #f4f4f4; padding: 0 .2rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.cellnav { font-size: .9rem; } dl { display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; } section.row { border-top: 1px solid #eee; }
table.dataTable td, table.dataTable th { font-size: .85rem; }
"""


def _itables():
    try:
        import itables  # noqa: F401
        import pandas  # noqa: F401
    except ImportError:  # pragma: no cover - the `site` extra is installed with the tests
        from ..errors import BadInput

        raise BadInput("--html needs the site extra: pip install 'decoderbench[site]' (itables)") from None
    from itables import to_html_datatable
    from itables.javascript import generate_init_offline_itables_html
    from itables.utils import read_package_file  # noqa: F401

    return to_html_datatable, generate_init_offline_itables_html


def _bundle_path() -> Path:
    import itables

    return Path(itables.__file__).parent / "html" / "dt_bundle.js"


def _num(x, digits: int = 4):
    """A number as the tables print it (``digits`` significant figures), kept a number for sorting."""
    if x is None or not isinstance(x, (int, float)) or isinstance(x, bool):
        return None
    if x != x or x in (float("inf"), float("-inf")):
        return None
    return float(f"{x:.{digits}g}")


def _a(href: str, text: str) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _table(columns: list[str], rows: list[list], caption: str | None = None, html_cols=()) -> str:
    """A sortable table (itables, offline). Cells of ``html_cols`` hold HTML; the rest is escaped."""
    import pandas as pd

    to_html_datatable, _ = _itables()
    data = []
    for r in rows:
        data.append([c if (i in html_cols or not isinstance(c, str)) else html.escape(c) for i, c in enumerate(r)])
    cols = {}
    for i, name in enumerate(columns):  # a column is numeric (missing: NaN, shown "-") or text (missing: "-")
        vals = [r[i] for r in data]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            cols[name] = pd.Series([float("nan") if v is None else v for v in vals],
                                   dtype="int64" if all(isinstance(v, int) for v in vals) else "float64")
        else:
            cols[name] = pd.Series(["-" if v is None else str(v) for v in vals], dtype=object)
    df = pd.DataFrame(cols, columns=columns)
    digest = hashlib.sha256(json.dumps([columns, data], default=str).encode()).hexdigest()[:12]
    from itables.typing import JavascriptFunction

    # numbers travel as numbers (numeric sorting), shown as the tables print them; a missing one as "-"
    render = JavascriptFunction("function (data, type) { if (type !== 'display') { return data; } "
                                "if (data === null || (typeof data === 'number' && isNaN(data))) { return '-'; } "
                                "return data; }")
    return to_html_datatable(df, caption=caption, connected=False, allow_html=True, paging=False, showIndex=False,
                             table_id=f"t{digest}", classes="display compact", order=[], maxBytes=0,
                             format_floats_in_python=False, columnDefs=[{"targets": "_all", "render": render}],
                             text_in_header_can_be_selected=False,  # a click anywhere on a header sorts
                             display_logo_when_loading=False, layout={"topStart": None, "topEnd": "search",
                                                                       "bottomStart": "info", "bottomEnd": None})


def _page(title: str, body: str, init: str, prov: str) -> str:
    nav = " ".join(_a(h, t) for h, t in (("index.html", "Summary"), ("index.html#unranked", "Not converged"),
                                         ("index.html#figures", "Figures"), ("cells.html", "Cells"),
                                         ("rows.html", "Rows")))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"{init}\n<nav>{nav}</nav>\n<h1>{html.escape(title)}</h1>\n{body}\n"
            f"<footer><h2 id=\"provenance\">Provenance</h2><p class=\"prov\">{prov}</p></footer>\n</body>\n</html>\n")


def _prov(title: str, command: str, rows: list[dict]) -> str:
    text = header(title, command, rows).splitlines()
    made = text[3] if len(text) > 3 else ""
    versions = text[4] if len(text) > 4 else ""
    return f"{html.escape(made)}<br>{html.escape(versions)}"


def _row_link(key) -> str:
    return f"rows.html#row-{key}"


def _entry_link(e: dict) -> str:
    keys = [k for k in e.get("keys", []) if k]
    return _a(_row_link(keys[0]), e["decoder"]) if keys else html.escape(e["decoder"])


def write_site(rows: list[dict], out_dir, title: str, command: str, figures: list[Path] = (),
               agg: dict | None = None) -> list[Path]:
    """Write the site into ``out_dir`` (created, its old pages replaced); returns the paths written. ``agg``:
    the rows' aggregate when the caller already has it."""
    _, init_html = _itables()
    rows = select_rows(rows)
    agg = agg if agg is not None else aggregate(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    init = init_html(_bundle_path())
    prov = _prov(title, command, rows)
    written = []

    # figures: the board's own files, copied in
    fig_dir = out / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_html = []
    for png in figures:
        png = Path(png)
        fig_dir.mkdir(exist_ok=True)
        for f in (png, png.with_suffix(".svg")):
            if f.is_file():
                shutil.copyfile(f, fig_dir / f.name)
                written.append(fig_dir / f.name)
        svg = png.with_suffix(".svg").name
        src = svg if (fig_dir / svg).is_file() else png.name
        fig_html.append(f'<figure><a href="figures/{src}"><img src="figures/{src}" alt="{html.escape(png.stem)}" '
                        f'class="figure" data-name="{png.stem}"></a><figcaption>{_a("figures/" + png.name, "PNG")} '
                        f'· {_a("figures/" + svg, "SVG")} · {html.escape(png.stem)}</figcaption></figure>')

    # ---------------------------------------------------------------- index.html
    hl = headline(agg)
    head_fig = next((f for f in fig_html if f'data-name="{HEADLINE_FIGURE[:-4]}"' in f), "")
    body = [f"<h2 id=\"finding\">What this board found</h2><p class=\"caption\">{html.escape(hl['finding'])}</p>",
            head_fig,
            _table(HEADLINE_COLUMNS, hl["rows"]) if hl["rows"] else "",
            f"<p class=\"caption\">{html.escape(hl['same'])}</p>" if hl["same"] else ""]
    decs = decoder_summary(agg)
    n_reg = {g: sum(1 for a in agg.values() if a["regime"] == g) for g in REGIMES}
    sum_rows = []
    for d in decs:
        o, rc = d["other"], d["recovery"]
        sum_rows.append([d["decoder"], d["kind"], f"{o['n']}/{o['of']}", _num(o["median"], 3), _num(o["worst"], 3),
                         f"{rc['n']}/{rc['of']}", rc["exact"], _num(rc["median"], 3), _num(rc["worst"], 3),
                         d["unconverged"]])
    body += [f"<h2 id=\"summary\">Decoders across cells</h2><p class=\"caption\">Ratio of each decoder's loss to the "
            "cell's appendix E.2 bound, median and worst over the cells where it is ranked, per regime and never "
            f"across: {html.escape(REGIME_TEXT['other'])} ({n_reg['other']} cells) and "
            f"{html.escape(REGIME_TEXT['recovery'])} ({n_reg['recovery']} cells). \"exact\": losses below "
            f"{EXACT_REL:g} of the trivial loss. Rows not converged or imprecise are in none of these columns.</p>",
            _table(["decoder", "kind", "cells (no recovery predicted)", "median / E.2", "worst / E.2",
                    "cells (recovery predicted)", "exact", "median / E.2 (recovery)", "worst / E.2 (recovery)",
                    "rows ranked nowhere"], sum_rows)]
    spreads = spread_rows(agg)

    def ent(e):
        return (f"{_entry_link(e)} ({html.escape(fmt(e['ratio_e2'], 3))}{', exact' if e['exact'] else ''})"
                if e else "-")

    sp_rows = [[_a(f"cells.html#{cell_id(s['cell'])}", cell_title(s["cell"], {})), s["n_s"], _num(s["r"]), s["p"],
                "recovery" if s["regime"] == "recovery" else "no recovery", _num(s["e2_bound"]), ent(s["best_z"]),
                ent(s["worst_z"]), _num(s["spread"], 3), ent(s["best_iterative"]), ent(s["best_learned"]),
                s["n_unconverged"]] for s in spreads]
    body += [f"<h2 id=\"cells\">Per cell: decoders that see only z, against iterative and learned ones</h2>"
             f"<p class=\"caption\">{html.escape(spread_caption(spreads))}</p>",
             _table(["cell", "n_s", "r", "p", "VAMP SE predicts", "E.2 bound", "best z-decoder", "worst z-decoder",
                     "spread (max/min)", "best iterative", "best learned", "rows ranked nowhere"], sp_rows,
                    html_cols=(0, 6, 7, 9, 10))]
    body.append("<h2 id=\"figures\">Figures</h2>" + ("".join(f for f in fig_html if f != head_fig)
                                                      or "<p>No figures (--no-figures).</p>"))
    unconv = unconverged_entries(agg)
    un_rows = [[_a(f"cells.html#{cell_id(u['cell'])}", f"n_s={u['n_s']} r={fmt(u['r'])} p={fmt(u['p'])}"),
                _a(_row_link(u["key"]), u["decoder"]), u["kind"], u["seed"], _num(u["loss"]), _num(u["loss_se"], 2),
                _num(u["ratio_e2"], 3), u["samples"], u["stop"] or "-", u["why"], u["plateau"] or "-"] for u in unconv]
    body += ["<h2 id=\"unranked\">Not converged or imprecise (ranked nowhere)</h2>"
             f"<p class=\"caption\">{html.escape(UNCONVERGED_TEXT)}</p>",
             _table(["cell", "decoder", "kind", "seed", "loss", "SE", "/ E.2 bound", "samples", "stop reason",
                     "why ranked nowhere", "plateau"], un_rows, html_cols=(0, 1)) if un_rows
             else "<p>None: every ok row is ranked.</p>"]
    failed = [(c, f) for c, a in agg.items() for f in a["failed"]]
    if failed:
        body.append("<h2 id=\"failed\">Failed or skipped rows</h2><ul>" + "".join(
            f"<li>{html.escape(f['decoder'])} on {_a('cells.html#' + cell_id(c), cell_title(c, {}))} (seed "
            f"{f['seed']}): {html.escape(str(f['status']))}: {html.escape(f['error'])}</li>" for c, f in failed)
            + "</ul>")
    (out / "index.html").write_text(_page(title, "\n".join(body), init, prov), encoding="utf-8")
    written.append(out / "index.html")

    # ---------------------------------------------------------------- cells.html
    cells = list(agg)
    parts = ["<p>" + " · ".join(_a(f"#{cell_id(c)}", cell_title(c, {})) for c in cells) + "</p>"]
    for i, (cell, a) in enumerate(agg.items()):
        t = a["theory"]
        links = [_a("index.html#cells", "summary")]
        if i > 0:
            links.insert(0, _a(f"#{cell_id(cells[i - 1])}", "previous cell"))
        if i + 1 < len(cells):
            links.append(_a(f"#{cell_id(cells[i + 1])}", "next cell"))
        ranked = [[k + 1, _entry_link(e), e["kind"], _num(e["loss"]), _num(e["loss_se"], 2),
                   "sampling only (1 seed)" if e["n_seeds"] < 2 else f"between {e['n_seeds']} seeds",
                   _num(e["seed_sd"], 2), _num(e["sampling_se"], 2), _num(e["ratio_e2"], 3), "yes" if e["exact"] else "",
                   _num(e["ratio_mmse"], 3), e["n_eval"], e["stop"] or ""] for k, e in enumerate(a["scored"])]
        parts.append(
            f"<section class=\"cell\" id=\"{cell_id(cell)}\"><h2>{html.escape(cell_title(cell, t))}</h2>"
            f"<p class=\"cellnav\">{' · '.join(links)}</p><p>Theory (Gaussian interference, sigma = "
            f"{fmt(t['sigma'])}): E.2 bound {fmt(t['e2_bound'])}, elementwise MMSE {fmt(t['mmse_elementwise'])}, "
            f"ReLU theory {fmt(t['relu_theory'])}, VAMP SE {fmt(t['vamp_se'])}, best linear {fmt(t['linear'])}, "
            f"trivial {fmt(t['trivial'])}. Regime: {html.escape(REGIME_TEXT[a['regime']])}.</p>")
        parts.append(_table(["rank", "decoder", "kind", "loss", "SE", "error from", "SD between seeds",
                             "sampling SE", "/ E.2 bound", "exact", "/ elementwise MMSE", "samples", "stop"], ranked,
                            html_cols=(1,)) if ranked else "<p>No decoder ranked on this cell.</p>")
        if a["unconverged"]:
            parts.append("<p class=\"note\">Not converged or imprecise on this cell (ranked nowhere):</p>")
            parts.append(_table(["decoder", "kind", "seed", "loss", "SE", "/ E.2 bound", "samples", "stop reason",
                                 "why ranked nowhere", "plateau"],
                                [[_a(_row_link(u["key"]), u["decoder"]), u["kind"], u["seed"], _num(u["loss"]),
                                  _num(u["loss_se"], 2), _num(u["ratio_e2"], 3), u["samples"], u["stop"] or "-",
                                  u["why"], u["plateau"] or "-"] for u in a["unconverged"]], html_cols=(0,)))
        if a["failed"]:
            parts.append("<ul>" + "".join(f"<li>{html.escape(f['decoder'])} (seed {f['seed']}): "
                                          f"{html.escape(str(f['status']))}: {html.escape(f['error'])}</li>"
                                          for f in a["failed"]) + "</ul>")
        parts.append("</section>")
    (out / "cells.html").write_text(_page(f"{title}: cells", "\n".join(parts), init, prov), encoding="utf-8")
    written.append(out / "cells.html")

    # ---------------------------------------------------------------- rows.html
    overview, details = [], []
    for r in sorted(rows, key=lambda r: (r.get("n_s"), r.get("n_d"), r.get("p"), r.get("decoder"), r.get("seed"))):
        cell = tuple(r.get(k) for k in ("encoder", "dtype", "n_s", "n_d", "p"))
        key = str(r.get("key"))
        overview.append([_a(f"#row-{key}", key[:10]), _a(f"cells.html#{cell_id(cell)}", cell_title(cell, {})),
                         r.get("decoder"), r.get("kind") or "", r.get("seed"), r.get("status"), _num(r.get("loss")),
                         _num(r.get("loss_se"), 2), r.get("n_eval"), str(r.get("sampling_stop") or ""),
                         "" if r.get("precision_met") is None else str(r.get("precision_met")), stop_text(r)])
        fields = [("cell", _a(f"cells.html#{cell_id(cell)}", cell_title(cell, {}))),
                  ("decoder", html.escape(f"{r.get('decoder')} ({r.get('kind')}), version {r.get('decoder_version')} "
                                          f"from {r.get('source')}")),
                  ("status", html.escape(str(r.get("status")) + (f": {r.get('error')}" if r.get("error") else ""))),
                  ("loss ± SE", html.escape(f"{r.get('loss')!r} ± {r.get('loss_se')!r} on {r.get('n_eval')} samples")),
                  ("sampling", html.escape(f"target SE {r.get('target_rel_se')} of the loss, min {r.get('min_samples')}"
                                           f", max {r.get('max_samples')}, stop {r.get('sampling_stop') or '?'}, "
                                           f"precision met {r.get('precision_met') if r.get('precision_met') is not None else '?'}")),
                  ("parameters", f"<code>{html.escape(json.dumps(params_of(r), sort_keys=True))}</code>"),
                  ("options", f"<code>{html.escape(str(r.get('options') or '{}'))}</code>"),
                  ("versions", html.escape(f"decoderbench {r.get('decoderbench_version')}, torch {r.get('torch_version')}"
                                           f", python {r.get('python_version')}, results format "
                                           f"{r.get('results_format')}, store format {r.get('store_format')}")),
                  ("device", html.escape(f"{r.get('device')}, {r.get('dtype')}")),
                  ("times", html.escape(f"fit {fmt(r.get('fit_time_s'), 3)} s, eval {fmt(r.get('eval_time_s'), 3)} s, "
                                        f"wall {fmt(r.get('wall_time_s'), 3)} s, finished {r.get('finished_at')}")),
                  ("command", f"<code>{html.escape(str(r.get('command') or '?'))}</code>"),
                  ("key", f"<code>{html.escape(key)}</code>")]
        details.append(f"<section class=\"row\" id=\"row-{html.escape(key)}\"><h3>{html.escape(str(r.get('decoder')))}"
                       f" on {html.escape(cell_title(cell, {}))}, seed {r.get('seed')}</h3><dl>"
                       + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields) + "</dl></section>")
    body = [_table(["row", "cell", "decoder", "kind", "seed", "status", "loss", "SE", "samples", "sampling stop",
                    "precision met", "stop"], overview, html_cols=(0, 1)),
            "<h2>Each row: parameters, versions and the command that made it</h2>", *details]
    (out / "rows.html").write_text(_page(f"{title}: rows", "\n".join(body), init, prov), encoding="utf-8")
    written.append(out / "rows.html")
    return written


def site_digest(site_dir) -> str | None:
    """The rows digest the site's pages name (from the provenance line), or None."""
    import re

    text = (Path(site_dir) / "index.html").read_text(encoding="utf-8")
    m = re.search(r"digest ([0-9a-f]{16})", text)
    return m.group(1) if m else None


__all__ = ["write_site", "site_digest", "SITE_DIR", "PAGES", "rows_digest", "__version__"]
