"""``report.html`` of one annotate run: counts by status, histograms of face size and of each
attribute score, and a contact sheet of up to 48 faces with their 68 keypoints and labels.

Self-contained HTML (inline SVG histograms, the sheet as an embedded PNG), no plotting library.
The sheet re-reads the sampled photos (crops are not stored by default).
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ..storage import filesystem, join
from . import state as ST

SHEET_FACES = 48
SHEET_LABELS = 3  # attribute labels written under a face on the contact sheet (then "+N")
HISTOGRAMS = 6  # with more binary outputs than this, a table of rates and histograms of the first few
TILE = 160


def _hist_svg(values: np.ndarray, title: str, bins: int = 20, rng=None, w: int = 360, h: int = 160) -> str:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return f"<div class='h'><b>{html.escape(title)}</b><p>no values</p></div>"
    counts, edges = np.histogram(values, bins=bins, range=rng)
    top = max(1, counts.max())
    bw = (w - 40) / bins
    bars = "".join(
        f"<rect x='{30 + i * bw:.1f}' y='{h - 20 - c / top * (h - 40):.1f}' width='{bw - 1:.1f}' "
        f"height='{c / top * (h - 40):.1f}' fill='#4a78b5'><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>"
        for i, c in enumerate(counts))
    axis = (f"<text x='30' y='{h - 5}' font-size='10'>{edges[0]:.3g}</text>"
            f"<text x='{w - 40}' y='{h - 5}' font-size='10'>{edges[-1]:.3g}</text>"
            f"<text x='2' y='20' font-size='10'>{top}</text>")
    return (f"<div class='h'><b>{html.escape(title)}</b> (n={len(values)})<br><svg width='{w}' height='{h}'>"
            f"{bars}{axis}</svg></div>")


def _sheet(rows: list[dict], attrs: list[str], options: dict) -> str:
    from ..imaging import decode_scaled
    cols = 8
    n = len(rows)
    if n == 0:
        return "<p>no faces</p>"
    sheet = Image.new("RGB", (cols * TILE, math.ceil(n / cols) * (TILE + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    cache: dict[str, np.ndarray | None] = {}
    for k, r in enumerate(rows):
        x0, y0 = (k % cols) * TILE, (k // cols) * (TILE + 28)
        if r["path"] not in cache:
            try:
                fs, p = filesystem(r["path"], options)
                with fs.open(p, "rb") as f:
                    cache[r["path"]] = decode_scaled(f.read(), max_side=None).image
            except Exception:
                cache[r["path"]] = None
        img = cache[r["path"]]
        if img is None:
            continue
        l, t, rr, b = (int(round(v)) for v in r["crop_box"])
        tile = Image.fromarray(img).crop((l, t, rr, b)).resize((TILE, TILE), Image.BILINEAR)
        sheet.paste(tile, (x0, y0))
        side = max(1.0, rr - l)
        kp = r.get("keypoints68")
        if kp:
            pts = (np.asarray(kp, np.float32).reshape(-1, 2) - [l, t]) / side * TILE
            for px, py in pts:
                draw.ellipse([x0 + px - 1.5, y0 + py - 1.5, x0 + px + 1.5, y0 + py + 1.5], fill=(0, 255, 0))
        yes = [a for a in attrs if r.get(f"{a}_label")]
        lab = " ".join(yes[:SHEET_LABELS]) + (f" +{len(yes) - SHEET_LABELS}" if len(yes) > SHEET_LABELS else "")
        ident = r.get("identity")
        draw.text((x0 + 3, y0 + TILE + 2), (lab or "-") + (f" {ident}" if ident else ""), fill="black")
        draw.text((x0 + 3, y0 + TILE + 14), f"{int(r['face_size'])}px #{r['face_index']}", fill="gray")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return f"<img alt='contact sheet' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _rates_table(ok: pa.Table, names: list[str]) -> str:
    """Per binary output: the share of faces labelled yes and the mean score, commonest first."""
    rows = []
    for n in names:
        lab = np.asarray(ok[f"{n}_label"].to_numpy(zero_copy_only=False), float) if f"{n}_label" in ok.column_names else []
        sc = np.asarray(ok[n].to_numpy(zero_copy_only=False), float)
        rows.append((float(np.nanmean(lab)) if len(lab) else float("nan"), n, float(np.nanmean(sc)) if len(sc) else float("nan")))
    body = "".join(f"<tr><td>{html.escape(n)}</td><td>{r:.1%}</td><td>{m:.3f}</td></tr>"
                   for r, n, m in sorted(rows, key=lambda t: -np.nan_to_num(t[0], nan=-1)))
    return ("<h3>Attributes: share of faces labelled yes</h3><table><tr><th>attribute</th><th>yes</th>"
            f"<th>mean score</th></tr>{body}</table>")


def _scalar_outputs(summary: dict) -> list[tuple[str, str]]:
    """``(name, kind)`` of the run's binary and regression outputs (the heads' declarations in
    the summary; runs written before those were recorded list their attributes)."""
    outs = summary.get("outputs")
    if outs is None:
        return [(a, "binary") for a in summary.get("attributes") or []]
    return [(o["name"], o["kind"]) for o in outs if o["kind"] in ("binary", "regression")]


def write_report(dst: str, folder: str, summary: dict, options: dict) -> str:
    """Write ``folder/report.html`` (``folder`` in the output filesystem); returns its path."""
    fs, _ = filesystem(dst, options)
    tables = []
    for p in ST.run_parts(fs, folder):
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    attrs = summary.get("attributes") or []
    parts = [f"<h1>facebatch annotate run {html.escape(summary['run_id'])}</h1>",
             f"<p>input {html.escape(str(summary['input']))}, listed {summary['listed']}: new {summary['new']}, "
             f"changed {summary['changed']}, unchanged {summary['unchanged']}, deleted {summary['deleted']}; "
             f"processed {summary['processed']} in {summary['wall_s']} s ({summary['images_per_s']} images/s)</p>",
             "<h2>Counts by status</h2><table><tr><th>status</th><th>inputs</th></tr>" +
             "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in summary["status_counts"].items()) +
             "</table>"]
    if tables:
        t = pa.concat_tables(tables, promote_options="default")
        ok = t.filter(pa.compute.equal(t["status"], "ok"))
        parts.append("<h2>Histograms</h2>")
        parts.append(_hist_svg(np.asarray(ok["face_size"].to_numpy(zero_copy_only=False), float), "face size (px)"))
        scalars = [(n, k) for n, k in _scalar_outputs(summary) if n in ok.column_names]
        binary = [n for n, k in scalars if k == "binary"]
        if len(binary) > HISTOGRAMS:  # many attributes: one table of rates, histograms for the first few
            parts.append(_rates_table(ok, binary))
            drop = set(binary[HISTOGRAMS:])
            scalars = [(n, k) for n, k in scalars if n not in drop]
        for name, kind in scalars:  # already only the columns the run has
            parts.append(_hist_svg(np.asarray(ok[name].to_numpy(zero_copy_only=False), float),
                                   f"{name} score" if kind == "binary" else name,
                                   rng=(0.0, 1.0) if kind == "binary" else None))
        rows = ok.to_pylist()
        rng = np.random.default_rng(0)
        pick = sorted(rng.choice(len(rows), size=min(SHEET_FACES, len(rows)), replace=False)) if rows else []
        parts.append(f"<h2>{len(pick)} sample faces</h2>")
        parts.append(_sheet([rows[i] for i in pick], attrs, options))
    body = "\n".join(parts)
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>facebatch annotate report</title><style>"
           "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
           "padding:2px 8px}.h{display:inline-block;margin:6px}</style></head><body>" + body + "</body></html>")
    path = join(folder, "report.html")
    with fs.open(path, "w") as f:
        f.write(doc)
    return path


def _photo_tile(path: str, box, options: dict, cache: dict, side: int = 72) -> Image.Image | None:
    """The face at ``box`` (original pixels), grown by 20% a side, as a ``side`` px tile."""
    from ..imaging import decode_scaled
    if path not in cache:
        try:
            fs, p = filesystem(path, options)
            with fs.open(p, "rb") as f:
                cache[path] = decode_scaled(f.read(), max_side=None).image
        except Exception:
            cache[path] = None
    img = cache[path]
    if img is None or box is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in box)
    g = 0.2 * max(x2 - x1, y2 - y1)
    return Image.fromarray(img).crop((int(x1 - g), int(y1 - g), int(x2 + g), int(y2 + g))).resize((side, side))


def add_people_section(dst: str, folder: str, options: dict, top: int = 20, per_person: int = 8) -> str:
    """Add the people section to ``folder/report.html`` after the people stage ran: counts of
    persons, singletons and gated faces (by reason), and the ``top`` biggest persons, each a strip
    of its ``per_person`` faces most like its centre. Returns the report's path."""
    from ..people.report import people_section
    sec = people_section(dst, options, top=top, per_person=per_person)
    c = sec["counts"]
    parts = ["<h2>People</h2>",
             f"<p>{c.get('persons', 0)} persons ({c.get('named', 0)} named), {c.get('singletons', 0)} singletons, "
             f"{c.get('gated', 0)} gated faces of {c.get('faces', 0)}"
             + (f" ({', '.join(f'{html.escape(str(k))}: {v}' for k, v in (c.get('gated_by_reason') or {}).items())})"
                if c.get("gated") else "") + "</p>", "<table>"]
    cache: dict = {}
    for p in sec["people"]:
        tiles = [t for t in (_photo_tile(f["path"], f.get("box"), options, cache) for f in p["faces"]) if t is not None]
        strip = Image.new("RGB", (max(1, len(tiles)) * 72, 72), "white")
        for k, t in enumerate(tiles):
            strip.paste(t, (k * 72, 0))
        buf = io.BytesIO()
        strip.save(buf, format="PNG")
        name = html.escape(str(p.get("name") or f"person {p['person_id']}"))
        parts.append(f"<tr><td>{name}<br>{p['n_faces']} faces, {p['n_photos']} photos</td><td><img alt='{name}' "
                     f"src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'></td></tr>")
    parts.append("</table>")
    fs, _ = filesystem(dst, options)
    path = join(folder, "report.html")
    with fs.open(path, "r") as f:
        doc = f.read()
    doc = doc.replace("</body>", "\n".join(parts) + "</body>", 1)
    with fs.open(path, "w") as f:
        f.write(doc)
    return path
