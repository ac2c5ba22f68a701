"""report.html: one self-contained page a clinician can read; figures and thumbnails are data URIs.

Its Content-Security-Policy forbids every fetch (`default-src 'none'`), so the page cannot reach
the network even by mistake; every value from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1080px;padding:16px 24px;color:#1b1b1b}
h1{font-size:22px;margin:.2em 0}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.warn{background:#fff4ce;border:1px solid #e0c060;padding:8px 12px}.muted{color:#666}
.figs{display:flex;flex-wrap:wrap;gap:8px}.case{display:inline-block;margin:4px;text-align:center;font-size:12px}
.case img{display:block;width:128px;height:128px}.pair{display:flex;gap:2px}
.big{font-size:20px;font-weight:600}
"""


@dataclass(frozen=True)
class Figures:
    """PNG bytes of the plots (None when the data cannot draw them) and (thumbnail, heatmap) JPEGs per example file."""

    roc: bytes | None
    pr: bytes | None
    reliability: bytes | None
    examples: dict[str, tuple[bytes, bytes | None]]


def data_uri(image: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode('ascii')}"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _estimate(estimate: dict[str, Any]) -> str:
    interval = estimate["ci95"]
    text = _number(estimate["value"])
    return f"{text} (95% CI {interval[0]:.3f} to {interval[1]:.3f})" if interval else f"{text} (no interval: too few scans of one class)"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(image: bytes | None, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="{data_uri(image, "image/png")}">' if image else ""


def _model(model: dict[str, Any]) -> str:
    patients = model["training_patients"]
    rows = [
        ["name, version", f"{model['name']} {model['version']}"],
        ["sha256", model["sha256"]],
        ["variant", model["variant"] or "none (the exported FP32 model)"],
        ["execution provider", model["execution_provider"]],
        ["decision threshold", _number(model["threshold"], 4)],
        ["heatmap output", "yes" if model["heatmap"] else "no"],
        ["training patients listed", "no" if patients is None else str(patients)],
        ["scored by", model["scored_by"]],
    ]
    return _table(["model", ""], rows)


def _operating_points(points: list[dict[str, Any]]) -> str:
    rows = [
        [p["name"], _number(p["threshold"], 4), _percent(p["sensitivity"]), _percent(p["specificity"]), _percent(p["ppv"]), _percent(p["npv"])]
        for p in points
    ]
    confusion = "".join(
        f'<table class="cm"><tr><th>{escape(p["name"])}</th><th>truth: effusion</th><th>truth: no effusion</th></tr>'
        f"<tr><td>flagged effusion</td><td>{p['tp']}</td><td>{p['fp']}</td></tr>"
        f"<tr><td>not flagged</td><td>{p['fn']}</td><td>{p['tn']}</td></tr></table>"
        for p in points
    )
    header = ["operating point", "threshold", "sensitivity", "specificity", "PPV", "NPV"]
    return _table(header, rows) + f'<div class="figs">{confusion}</div>'


def _data(data: dict[str, Any]) -> str:
    overlap = data["training_overlap"]
    if not overlap["checked"]:
        overlap_text = f"not checked: {overlap['reason']}."
    elif overlap["patients"]:
        overlap_text = (
            f"<b>{len(overlap['patients'])} patient(s), {len(overlap['files'])} file(s) were in the model's training data</b>; "
            "results on them are optimistic."
        )
    else:
        overlap_text = "none of the validation patients is among the model's training patients."
    counts = [
        ["files found", str(data["files"])],
        ["scored with a label", f"{data['scored_with_label']} ({data['positives']} effusion, {data['negatives']} no effusion)"],
        ["refused by the service", str(len(data["refused"]))],
        ["scored without a label", str(len(data["unlabelled"]))],
        ["CSV rows without a file", str(len(data["labels_without_file"]))],
        ["not scored yet (rerun to resume)", str(len(data["not_scored_yet"]))],
    ]
    facets = "".join(
        _table([title, "files"], [[key, str(value)] for key, value in data[name].items()])
        for title, name in (("format", "formats"), ("size", "sizes"), ("mode", "modes"))
    )
    duplicates = (
        "<p>Identical pixels in several files (one scan counted more than once):</p>"
        + _table(["files with identical pixels"], [[", ".join(group)] for group in data["duplicates"]])
        if data["duplicates"]
        else "<p>No two files have identical decoded pixels.</p>"
    )
    refused = (
        _table(["refused file", "code", "why"], [[r["file"], r["error_code"], r["error_message"] or ""] for r in data["refused"]])
        if data["refused"]
        else ""
    )
    return (
        _table(["data", ""], counts)
        + f'<div class="figs">{facets}</div>{duplicates}<p>Training-data overlap: {overlap_text}</p>{refused}'
    )


def _subgroups(subgroups: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for column, rows in subgroups.items():
        table_rows = [
            [r["value"], str(r["n"]), str(r["positives"]), str(r["negatives"]), _estimate(r["auroc"]), _percent(r["sensitivity"]), _percent(r["specificity"])]
            for r in rows
        ]
        header = [column, "scans", "effusion", "no effusion", "AUROC", "sensitivity", "specificity"]
        parts.append(_table(header, table_rows))
    return "".join(parts) or '<p class="muted">No subgroup column was named (use --by COLUMN).</p>'


def _examples(title: str, cases: list[dict[str, Any]], images: dict[str, tuple[bytes, bytes | None]]) -> str:
    if not cases:
        return f"<h3>{escape(title)}</h3><p class='muted'>None.</p>"
    cells = []
    for case in cases:
        thumbnail, heatmap = images.get(case["file"], (None, None))
        pictures = "".join(
            f'<img alt="{escape(alt)}" src="{data_uri(image, "image/jpeg")}">'
            for image, alt in ((thumbnail, "scan as the model saw it"), (heatmap, "heatmap"))
            if image
        )
        cells.append(
            f'<div class="case"><div class="pair">{pictures}</div>{escape(case["file"])}<br>p = {case["probability"]:.3f}</div>'
        )
    return f"<h3>{escape(title)}</h3>{''.join(cells)}"


def render_html(report: dict[str, Any], figures: Figures) -> str:
    """The page, from report.json's content and the figures."""
    model, data, discrimination = report["model"], report["data"], report["discrimination"]
    ece = report["calibration"]["ece"]
    examples = report["examples"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>Validation of {escape(model['name'])} {escape(model['version'])}</title><style>{STYLE}</style></head>
<body>
<h1>Local validation: {escape(model['name'])} {escape(model['version'])}</h1>
<p class="warn">Research software, not for clinical use. Thresholds below are chosen on these same scans: confirm them
on later scans before relying on them. Labels are only as good as their source.</p>
<p class="muted">Data: {escape(data['folder'])}{' with labels ' + escape(data['labels_csv']) if data['labels_csv'] else ''};
report created {escape(report['created_at'])}; schema version {report['schema_version']}.</p>
<h2>Discrimination</h2>
<p><span class="big">AUROC {escape(_estimate(discrimination['auroc']))}</span><br>
Average precision {escape(_estimate(discrimination['average_precision']))}; effusion prevalence here
{_percent(data['positives'] / data['scored_with_label'] if data['scored_with_label'] else None)}.</p>
<div class="figs">{_figure(figures.roc, 'ROC curve')}{_figure(figures.pr, 'precision-recall curve')}</div>
<h2>Operating points</h2>{_operating_points(report['operating_points'])}
<h2>Calibration</h2><p>Expected calibration error (10 equal-width bins): {_number(ece)}</p>
{_figure(figures.reliability, 'reliability plot')}
<h2>Subgroups</h2>{_subgroups(report['subgroups'])}
<h2>Most confident errors</h2>
<p class="muted">Each case: the scan as the model saw it (256 px, min-max scaled) and, where the model has one, its heatmap.</p>
{_examples('False negatives (effusion, lowest probability)', examples['false_negatives'], figures.examples)}
{_examples('False positives (no effusion, highest probability)', examples['false_positives'], figures.examples)}
<h2>Data</h2>{_data(data)}
<h2>Model</h2>{_model(model)}
</body></html>
"""
