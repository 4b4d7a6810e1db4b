"""The batch report: one HTML page that lists every result, sortable, with each overlay as a thumbnail.

The page needs no server: styles and the sorting script are inline, and thumbnails (and overlays,
when the batch wrote them) are linked relative to the page, so the output folder can be moved or
zipped whole. Rows start sorted by score, highest first, so both extremes are one click apart.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import writing

# (column key, header, kind): "number" columns sort numerically, with empty cells last either way.
COLUMNS = (("index", "#", "number"), ("thumbnail", "overlay", "none"), ("image", "image", "text"),
           ("question", "question", "text"), ("zero_shot", "zero-shot answer", "text"), ("score", "score", "number"),
           ("top10_share", "top 10% share", "number"),
           ("peak", "peak (x, y)", "none"), ("insertion_auc", "insertion AUC", "number"),
           ("deletion_auc", "deletion AUC", "number"), ("seconds", "seconds", "number"), ("error", "error", "text"))

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th[data-kind=number], th[data-kind=text] { cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.error { color: #b00020; } img { display: block; max-width: 160px; max-height: 160px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; } dt { font-weight: 600; }
"""

# Click a header to sort by it; click again to reverse. Empty numbers sort last in both directions.
SCRIPT = """
document.querySelectorAll("th[data-kind=number], th[data-kind=text]").forEach((header) => {
  header.addEventListener("click", () => {
    const table = header.closest("table"), body = table.tBodies[0], index = header.cellIndex;
    const descending = header.getAttribute("aria-sort") !== "descending";
    table.querySelectorAll("th").forEach((th) => th.removeAttribute("aria-sort"));
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    const number = header.dataset.kind === "number", sign = descending ? -1 : 1;
    const value = (row) => row.cells[index].dataset.value;
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = value(a), y = value(b);
      if (number) {
        if (x === "" || y === "") return (x === "") - (y === "");
        return sign * (parseFloat(x) - parseFloat(y));
      }
      return sign * x.localeCompare(y);
    });
    rows.forEach((row) => body.appendChild(row));
  });
});
"""


def write_report(path: Path, table: Sequence[dict], manifest: dict) -> None:
    """Write the report of a batch's results next to its outputs.

    table: rows as in results.parquet, each with its `thumbnail` path (relative to the page) added.
    """
    columns = [c for c in COLUMNS if c[0] not in ("insertion_auc", "deletion_auc") or manifest["settings"]["evaluate"]]
    order = sorted(range(len(table)), key=lambda i: _sort_key(table[i]["score"]))
    head = "".join(f'<th data-kind="{kind}"{_initial_sort(key)}>{html.escape(label)}</th>'
                   for key, label, kind in columns)
    body = "\n".join(_row(index, table[index], columns) for index in order)
    last = manifest["runs"][-1]
    counts = last.get("counts", {})
    settings = manifest["settings"]
    model = settings["model"]
    facts = {"model": f"{model['weights'] or model['name']} ({model['precision']} on {model['device']})",
             "settings": ", ".join(f"{k} {v}" for k, v in _explain_settings(settings["explain"]).items()),
             "rows": counts.get("rows", len(table)),
             "failed": counts.get("failed", "?"), "engine": last.get("engine", "?"),
             "finished": last.get("finished", "?"), "runs": len(manifest["runs"])}
    if counts.get("dropped"):
        facts["dropped"] = (f"{counts['dropped']} earlier results, whose picture is no longer in the input "
                            "(deleted, changed or renamed)")
    summary = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items())
    with writing(path):
        path.write_text(_page(summary, head, body), encoding="utf-8")


def _page(summary: str, head: str, body: str) -> str:
    """The whole page: the facts (<dt>/<dd> pairs), the table's header cells and its rows."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cocoa-clip batch report</title>
<style>{STYLE}</style></head>
<body>
<h1>cocoa-clip batch report</h1>
<dl>{summary}</dl>
<p>Full table: <a href="results.parquet">results.parquet</a>; settings and versions:
<a href="manifest.json">manifest.json</a>. Click a column's header to sort by it.</p>
<table id="results"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def _explain_settings(options: dict) -> dict:
    """The explain settings that shaped the maps: those given, and the stopping rule only where masks were auto."""
    auto_only = ("stability", "max_masks") if options.get("masks") != "auto" else ()
    return {key: value for key, value in options.items() if value is not None and key not in auto_only}


def _initial_sort(key: str) -> str:
    return ' aria-sort="descending"' if key == "score" else ""


def _sort_key(score: float) -> tuple[bool, float]:
    """Highest score first, rows without a score (failed) last."""
    return (math.isnan(score), -score if not math.isnan(score) else 0.0)


def _row(index: int, result: dict, columns: Sequence[tuple[str, str, str]]) -> str:
    cells = []
    for key, _, kind in columns:
        if key == "index":
            value, shown = index + 1, str(index + 1)
        elif key == "thumbnail":
            cells.append(f"<td>{_thumbnail(result)}</td>")
            continue
        elif key == "question":
            value = shown = _question(result)
        elif key == "peak":
            cells.append(f"<td>{result['peak_x']}, {result['peak_y']}</td>" if result["peak_x"] >= 0 else "<td></td>")
            continue
        elif kind == "number":
            value = result[key]
            shown = "" if value is None or math.isnan(value) else f"{value:.4f}" if key != "seconds" else f"{value:.1f}"
            value = "" if shown == "" else repr(float(value))
        else:
            value = shown = result[key]
        css = f' class="{"number " if kind == "number" else ""}{key}"'
        cells.append(f'<td{css} data-value="{html.escape(str(value))}">{html.escape(shown)}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def _thumbnail(result: dict) -> str:
    if result["error"]:
        return ""
    image = f'<img src="{html.escape(result["thumbnail"])}" alt="overlay" loading="lazy">'
    return f'<a href="{html.escape(result["overlay"])}">{image}</a>' if result["overlay"] else image


def _question(result: dict) -> str:
    corpus = result["corpus"].replace("|", ", ") or "(corpus images)"
    foil = result["foil"].replace("|", ", ") or (f"{result['foil_preset']} classes" if result["foil_preset"] else "")
    what = {"cocoa": f"{corpus} rather than {foil or '(foil images)'}", "corpus": corpus,
            "label-free": "the image itself", "contrastive-label-free": f"the image itself rather than {foil}"}
    return f"{what.get(result['target'], result['target'])} (seed {result['seed']})"
