"""``bitsound report``: one self-contained HTML page over many runs.

The page needs nothing but itself: figures are PNGs embedded as base64 ``data:`` URIs, the
styles and the few lines of table-sorting script are inline, and nothing is fetched from a
network (no CDN, no fonts, no server), so it opens offline and can be mailed as one file.

Contents: a comparison table of every run (click a column header to sort), accuracy against
model size (KB) and against operations (MACs + BOPs/64) with the Pareto front of our runs marked
and the published points of the seed systems the runs' recipes name; then per run its training
curves, confusion matrix, per-class recall, per-group and per-device accuracy (when the clips
carry them), the complexity table per layer and the engine's speed (when a ``.bsnn`` is beside
the run). Each stage of a ``bitsound compress`` folder is a row of the table and a point of the
plots; the folder gets one section with its stage table (sizes, operations, accuracies, the
engine's time and agreement, what each stage did).
"""

from __future__ import annotations

import base64
import datetime
import html
import logging
from pathlib import Path

import numpy as np

from bitsound.complexity import XNOR_SPEEDUP
from bitsound.published import PUBLISHED
from bitsound.report import plots
from bitsound.report.runs import Run, load_runs
from bitsound.train.checkpoint import save_text

log = logging.getLogger("bitsound.report")

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;
 color:#222;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin-bottom:0.3em} .note{color:#555;font-size:0.9em} .figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:6px 0} figcaption{font-size:0.85em;color:#555;max-width:760px}
img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right} th{background:#f3f3f3}
td.t,th.t{text-align:left} td.t{max-width:12em;overflow-wrap:anywhere}
table.sortable th{cursor:pointer} table.sortable th:hover{background:#e4e4e4}
th.asc::after{content:' \\25B2'} th.desc::after{content:' \\25BC'}
.front{font-weight:bold} details{margin:6px 0}
"""

# Click a header to sort by it; cells sort by their data-v value (numbers numerically).
_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute('data-v');
        if (v === null) { v = cell.textContent; }
        var n = parseFloat(v);
        return isNaN(n) ? v.toLowerCase() : n;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _e(text) -> str:
    return html.escape(str(text))


def _img(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f} %"


def _num(value, fmt: str = ",") -> str:
    return "-" if value is None else format(value, fmt)


def _cell(text: str, sort=None, cls: str = "") -> str:
    attr = "" if sort is None else f' data-v="{_e(sort)}"'
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{attr}>{text}</td>"


def _comparison(runs: list[Run]) -> str:
    header = ["run", "recipe", "data", "held-out split", "accuracy", "balanced acc.", "params", "size (KB)",
              "MACs", "BOPs", "MACs + BOPs/64", "binary", "engine ms", "engine speed-up"]
    rows = []
    for run in runs:
        c = run.costs()
        balanced = run.balanced_accuracy
        cells = [
            _cell(f'<a href="#{_anchor(run)}">{_e(run.name)}</a>', run.name, "t"),
            _cell(_e(run.recipe), run.recipe, "t"),
            _cell(_e(run.data), run.data, "t"),
            _cell(_e(run.split), run.split, "t"),
            _cell(_pct(run.accuracy), "" if run.accuracy is None else run.accuracy),
            _cell(_pct(balanced), "" if balanced is None else balanced),
            _cell(_num(c and c["params"]), c and c["params"]),
            _cell("-" if c is None else f"{c['kb']:,.2f}", c and c["kb"]),
            _cell(_num(c and c["macs"]), c and c["macs"]),
            _cell(_num(c and c["bops"]), c and c["bops"]),
            _cell("-" if c is None else f"{c['mac_equivalents']:,.0f}", c and c["mac_equivalents"]),
            _cell("yes" if run.binary else "no", int(run.binary), "t"),
            _cell("-" if not run.engine else f"{run.engine['engine_ms']:.3f}",
                  run.engine and run.engine["engine_ms"]),
            _cell("-" if not run.engine else f"{run.engine['speedup']:.1f}x",
                  run.engine and run.engine["speedup"]),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f'<th class="t">{_e(h)}</th>' if i < 4 or h == "binary" else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header))
    return (f'<table class="sortable" id="comparison"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _anchor(run: Run) -> str:
    return _anchor_of(run.name)


def _anchor_of(name: str) -> str:
    return "run-" + "".join(ch if ch.isalnum() else "-" for ch in name)


def _published(runs: list[Run]) -> list[tuple[str, object]]:
    names = sorted({name for run in runs for name in run.references})
    return [(name, PUBLISHED.get(name)) for name in names]


def _pareto_section(runs: list[Run]) -> str:
    systems = _published(runs)
    scored = [r for r in runs if r.accuracy is not None and r.costs() is not None]
    parts = []
    if not scored:
        parts.append('<p class="note">No run has both a held-out accuracy and a model file, so there is '
                     "nothing to plot (train with a held-out split, or run bitsound cv).</p>")
    for axis, xlabel, title, cost in (
            ("kb", "model size (KB, 1 KB = 1024 B; storage rule)", "accuracy vs model size",
             lambda r: r.costs()["kb"]),
            ("macs", f"operations per example (MACs + BOPs/{XNOR_SPEEDUP})", "accuracy vs operations",
             lambda r: r.costs()["mac_equivalents"])):
        if not scored:
            break
        ours = [plots.Point(r.name, r.accuracy, max(cost(r), 1e-9), r.binary, r.data) for r in scored]
        published = [(name, p.data, plots.Point(p.name, p.accuracy, getattr(p, axis)))
                     for name, system in systems for p in system.points if getattr(p, axis)]
        png = plots.pareto(ours, published, xlabel=xlabel, title=title)
        front = ", ".join(p.name for data in sorted({p.data for p in ours})
                          for p in plots.pareto_front([q for q in ours if q.data == data]))
        what = "size" if axis == "kb" else "operations"
        caption = ("Each filled marker is one of our runs at its held-out accuracy (see the table's "
                   "split column; each stage of a compression run is one marker); red rings (joined "
                   "by the dashed line) mark the runs no other run on the same data beats on both "
                   f"accuracy and {what}: the Pareto front of each data "
                   f"set (also marked *: {front}). "
                   f"Hollow markers are published numbers of the seed systems the recipes name, "
                   f"measured on their own data sets: context, not a like-for-like comparison.")
        if axis == "macs":
            caption += (f" Binary operations (XNOR + popcount) count 1/{XNOR_SPEEDUP} MAC, seed 001's cost "
                        f"model; its XNOR rows report FLOPs by the same formula.")
        parts.append(_img(png, title, caption))
    table = ""
    if systems:
        rows = []
        for name, system in systems:
            for p in system.points:
                rows.append("<tr>" + "".join([
                    _cell(_e(name), cls="t"), _cell(_e(p.name), cls="t"), _cell(_pct(p.accuracy)),
                    _cell("-" if p.kb is None else f"{p.kb:,.1f}"),
                    _cell("-" if p.macs is None else f"{p.macs:,.0f}"),
                    _cell("-" if p.params is None else f"{p.params:,.0f}"),
                    _cell(_e(p.data), cls="t"), _cell(_e(system.source + ("; " + p.note if p.note else "")),
                                                      cls="t")]) + "</tr>")
        table = ("<details open><summary>published points drawn above</summary><table><thead><tr>"
                 + "".join(f'<th class="t">{h}</th>' for h in ("system", "model", "accuracy", "KB", "MACs",
                                                             "params", "data", "source"))
                 + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>")
    return '<div class="figs">' + "".join(parts) + "</div>" + table


def _complexity_table(run: Run) -> str:
    c = run.complexity
    if c is None:
        return '<p class="note">No model.pt in this run: no complexity table.</p>'
    head = ("<tr>" + "".join(f'<th class="t">{h}</th>' if i < 3 else f"<th>{h}</th>" for i, h in enumerate(
        ("layer", "type", "output", "params", "bits (w/a)", "bytes", "MACs", "BOPs"))) + "</tr>")
    rows = []
    for layer in c.layers:
        shape = "x".join(map(str, layer.output_shape)) if layer.output_shape else "-"
        bits = f"{layer.bits_per_weight}/{layer.input_bits}" if layer.params else ""
        rows.append("<tr>" + "".join([
            _cell(_e(layer.name), cls="t"), _cell(_e(layer.type), cls="t"), _cell(shape, cls="t"),
            _cell(f"{layer.params:,}"), _cell(bits), _cell(f"{layer.bytes['storage']:,.1f}"),
            _cell(f"{layer.macs:,}"), _cell(f"{layer.bops:,}")]) + "</tr>")
    rows.append("<tr>" + "".join([
        _cell("<b>total</b>", cls="t"), _cell(""), _cell(""), _cell(f"<b>{c.params:,}</b>"), _cell(""),
        _cell(f"<b>{c.bytes['storage']:,.1f}</b>"), _cell(f"<b>{c.macs:,}</b>"),
        _cell(f"<b>{c.bops:,}</b>")]) + "</tr>")
    kb = ", ".join(f"{rule} {value:,.2f} KB" for rule, value in c.kb.items())
    return (f"<details><summary>complexity per layer: {c.params:,} parameters, {kb}; {c.macs:,} MACs, "
            f"{c.bops:,} binary ops (input {'x'.join(map(str, c.input_shape))})</summary>"
            f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            '<p class="note">bits: weight / input bits; bytes under the storage rule (1-bit weights '
            "at 1 bit, floats at 32, plus scales and batch-norm statistics); BOPs are XNOR-popcount "
            "lanes of layers with 1-bit weights and inputs (see bitsound.complexity).</p></details>")


def _run_section(run: Run) -> str:
    parts = [f'<h2 id="{_anchor(run)}">{_e(run.name)}</h2>',
             f'<p>recipe <b>{_e(run.recipe)}</b> on <code>{_e(run.data)}</code>; {_e(run.split)}; '
             f"{len(run.labels)} classes; held-out accuracy <b>{_pct(run.accuracy)}</b>"
             + (f", folds {', '.join(f'{f.held_out} {_pct(f.accuracy)}' for f in run.cv.folds)}"
                if run.cv else "")
             + f'. <span class="note">({_e(run.path)})</span></p>']
    figs = []
    curves = plots.training_curves([(f.name, f.history) for f in run.folds])
    flips = any("sign_flip_fraction" in r for f in run.folds for r in f.history)
    caption = "Per epoch: training loss (solid) and held-out loss (dashed); held-out accuracy; learning rate"
    if flips:
        caption += ("; and the share of the binary layers' latent weights whose sign flipped during the "
                    "epoch (the network only sees the signs)")
    caption += ". One line per cross-validation fold." if len(run.folds) > 1 else "."
    figs.append(_img(curves, "training curves", caption))
    confusion = run.confusion()
    if confusion is None:
        figs.append('<p class="note">No held-out predictions: nothing was held out (split kind none), so '
                    "there is no confusion matrix. Use a held-out split or bitsound cv.</p>")
    else:
        matrix, recall = confusion
        source = ("" if run.predictions else
                  " Drawn from the confusion matrix stored in metrics.json: this result file predates "
                  "stored predictions, so there is no per-group or per-device accuracy.")
        figs.append(_img(plots.confusion(matrix, run.labels), "confusion matrix",
                         "Rows: the true label of each held-out example; columns: the model's label. Cell "
                         "text is the count, shade the share of the row (its recall on the diagonal)."
                         + source))
        figs.append(_img(plots.bars(run.labels, list(recall), list(matrix.sum(axis=1)),
                                    title="recall per class (held out)", xlabel="% of the class's examples "
                                    "labelled correctly"), "per-class recall",
                         "Share of each class's held-out examples the model labelled correctly; n is the "
                         "class's number of held-out examples."))
        for key, what in (("group", "group (speaker, recording or location)"),
                          ("device", "recording device")):
            rows = run.accuracy_by(key)
            if rows:
                names, accs, counts = zip(*rows, strict=True)
                figs.append(_img(plots.bars(list(names), list(accs), list(counts),
                                            title=f"accuracy per {key} (held out)",
                                            xlabel="% of its examples labelled correctly"),
                                 f"accuracy per {key}", f"Held-out accuracy for each {what} the held-out "
                                 f"clips carry; n is its number of held-out examples."))
    parts.append('<div class="figs">' + "".join(figs) + "</div>")
    parts.append(_complexity_table(run))
    if run.engine:
        e = run.engine
        parts.append(f"<p>Engine ({_e(e['file'])}, {_e(e['isa'])}): <b>{e['engine_ms']:.3f} ms</b> "
                     f"per window vs PyTorch {e['torch_ms']:.3f} ms, {e['speedup']:.1f}x (one thread, "
                     "batch of one, network only, fastest of repeated calls, measured when this report "
                     "was made).</p>")
    return "\n".join(parts)


def _compress_section(first: Run) -> str:
    """One compress folder: every stage as a table row (what bitsound compress measured)."""
    result = first.compress
    head = ["stage", "kind", "params", "non-zero", "KB storage", "MACs", "BOPs", "held-out acc.",
            "deciding acc.", ".bsnn KB", "engine ms", "engine labels equal", "what it did"]
    rows = []
    for r in result.rows:
        agree = r.engine or {}
        labels = (f"{agree['labels_equal']}/{agree['examples']}" if "labels_equal" in agree else "-")
        anchor = _anchor_of(f"{first.path.name}/{r.stage}")  # the comparison table links here
        rows.append("<tr>" + "".join([
            _cell(f'<a id="{anchor}"></a>{_e(r.stage)}', cls="t"), _cell(_e(r.kind), cls="t"),
            _cell(f"{r.params:,}"), _cell(f"{r.nonzero_params:,}"), _cell(f"{r.kb['storage']:,.2f}"),
            _cell(f"{r.macs:,}"), _cell(f"{r.bops:,}"), _cell(_pct(r.held_out_accuracy)),
            _cell(_pct(r.criterion_accuracy)),
            _cell("-" if r.bsnn_bytes is None else f"{r.bsnn_bytes / 1024:,.1f}"),
            _cell("-" if r.engine_ms is None else f"{r.engine_ms:.3f}"), _cell(labels),
            _cell(_e("; ".join(r.notes)), cls="t")]) + "</tr>")
    split = result.split
    return (f'<h2 id="{_anchor_of("compress-" + first.path.name)}">{_e(first.path.name)}: '
            f"compression pipeline {_e(result.pipeline)}</h2>"
            f"<p>input model <code>{_e(result.model)}</code> (recipe <b>{_e(result.recipe)}</b> on "
            f"<code>{_e(result.data)}</code>); held-out accuracy on its {_e(split.kind)} split"
            + (f" '{_e(split.name)}'" if split.name else "")
            + f"; decisions on {_e(result.criterion)}. "
            f'<span class="note">({_e(first.path)})</span></p>'
            + (f'<p class="note">{_e(result.description)}</p>' if result.description else "")
            + "<table><thead><tr>" + "".join(f'<th class="t">{_e(h)}</th>' if h in ("stage", "kind",
                                                                                   "what it did")
                                             else f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            '<p class="note">Each stage measured on its saved model.pt by bitsound compress: sizes under the '
            "storage rule, engine time the mean per example over a batch on one thread, and how many "
            "held-out examples the engine labels as PyTorch does.</p>")


def render_report(runs: list[Run], *, title: str = "bitsound report") -> str:
    """The HTML page (a string) for ``runs``."""
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="note">{len(runs)} runs; made {made}. Accuracy is always on data the model never '
            f"trained on, with the split named per run. Click a column header to sort.</p>",
            "<h2>comparison</h2>", _comparison(runs), "<h2>accuracy against cost</h2>", _pareto_section(runs)]
    done: set[Path] = set()
    for run in runs:
        if run.kind != "compress":
            body.append(_run_section(run))
        elif run.path not in done:
            done.add(run.path)
            body.append(_compress_section(run))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")


def write_report(paths: list[Path], out: Path, *, title: str = "bitsound report",
                 measure_engine: bool = True) -> list[Run]:
    """Read the run folders ``paths`` and write the report to ``out`` (atomically)."""
    runs = load_runs(paths, measure_engine=measure_engine)
    save_text(render_report(runs, title=title), Path(out))
    log.info("report of %d runs -> %s", len(runs), out)
    return runs


__all__ = ["render_report", "write_report"]
