"""Before/after previews a person can look at: an HTML page and a PNG contact sheet.

The source images shown here are the private originals: previews are for local review, never publish them.
"""

from __future__ import annotations

import base64
import html
import io
import os

from . import columns as C
from .utils.images import open_cell

THUMB = 320
_STATUS_COLOUR = {
    C.STATUS_PASSED: (46, 125, 50),
    C.STATUS_EDITED: (21, 101, 192),
    C.STATUS_FALLBACK: (239, 108, 0),
    C.STATUS_FAILED: (198, 40, 40),
    C.STATUS_INVALID: (120, 120, 120),
}


def _thumb(img, regions=None):
    from PIL import Image, ImageDraw

    if img is None:
        canvas = Image.new("RGB", (THUMB, THUMB * 3 // 4), (230, 230, 230))
        ImageDraw.Draw(canvas).text((10, 10), "no image", fill=(90, 90, 90))
        return canvas
    rgb = img.convert("RGB")
    scale = THUMB / max(rgb.size)
    small = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    if regions:
        draw = ImageDraw.Draw(small)
        for reg in regions:
            x0, y0, x1, y1 = (v * scale for v in reg["box"])
            colour = (230, 30, 30) if reg["category"] == "people" else (255, 170, 0)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    return small


def _b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def write_preview(original, anonymized, out_dir: str, image_column: str = "image", limit: int = 48) -> dict:
    """Write ``preview.html`` and ``preview.png`` (before with detected boxes | after) for the first ``limit`` rows."""
    from datasets import Image as ImageFeature
    from PIL import Image, ImageDraw

    os.makedirs(out_dir, exist_ok=True)
    n = min(limit, len(anonymized))
    src = original.cast_column(image_column, ImageFeature(decode=False)).select(range(n))
    dst = anonymized.cast_column(image_column, ImageFeature(decode=False)).select(range(n))
    rows_html, pairs = [], []
    for before_cell, row in zip(src[image_column], dst):
        an = row[C.ANONYMIZATION]
        before = _thumb(open_cell(before_cell), row[C.PRIVACY_REGIONS])
        after = _thumb(open_cell(row[image_column]))
        pairs.append((before, after, an["status"], ", ".join(row[C.PRIVACY_CATEGORIES]) or "-"))
        review = "".join(f"<li>{html.escape(i['item'])}: {html.escape(i['reason'])}</li>" for i in row[C.PRIVACY_REVIEW])
        rows_html.append(
            "<tr>"
            f"<td><img src='data:image/jpeg;base64,{_b64(before)}'></td>"
            f"<td><img src='data:image/jpeg;base64,{_b64(after)}'></td>"
            f"<td><b class='s-{an['status']}'>{an['status']}</b> ({html.escape(an['editor'])})<br>"
            f"<b>categories:</b> {html.escape(', '.join(row[C.PRIVACY_CATEGORIES]) or '-')}<ul>{review}</ul>"
            f"<b>private caption:</b> {html.escape(row[C.PRIVATE_CAPTION] or '')}<br>"
            f"<b>public caption:</b> {html.escape(row[C.PUBLIC_CAPTION] or '')}<br>"
            f"<b>edit instruction:</b> {html.escape(row[C.EDIT_INSTRUCTION] or '')}<br>"
            f"<small>caption source: {an['caption_source']}; metadata removed: {html.escape(', '.join(row[C.METADATA_REMOVED]) or '-')}"
            f"{'; error: ' + html.escape(an['error']) if an['error'] else ''}</small></td>"
            "</tr>"
        )
    style = "".join(f".s-{s}{{color:rgb{c}}}" for s, c in _STATUS_COLOUR.items())
    page = (
        "<!doctype html><meta charset='utf-8'><title>Unsafe2Safe preview</title>"
        f"<style>body{{font-family:sans-serif}}td{{vertical-align:top;padding:6px;border-bottom:1px solid #ddd}}{style}</style>"
        f"<h1>Unsafe2Safe: before / after ({n} of {len(anonymized)} rows)</h1>"
        "<p>Left: the source with the detected sensitive regions boxed (red: people, orange: text). "
        "Right: the published image. The left column shows private originals: keep this page local.</p>"
        f"<table><tr><th>before</th><th>after</th><th>row</th></tr>{''.join(rows_html)}</table>"
    )
    html_path = os.path.join(out_dir, "preview.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    # contact sheet: two before|after pairs per line, a status line under each, lines as tall as their images
    cols, gap, label_h = 2, 10, 18
    cell_w = 2 * THUMB + 4 + gap
    lines = [pairs[i : i + cols] for i in range(0, len(pairs), cols)] or [[]]
    heights = [max([max(b.height, a.height) for b, a, _, _ in line] or [THUMB // 2]) + label_h + gap for line in lines]
    sheet = Image.new("RGB", (cols * cell_w + gap, sum(heights) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    y = gap
    for line, height in zip(lines, heights):
        for i, (before, after, status, cats) in enumerate(line):
            x = gap + i * cell_w
            sheet.paste(before, (x, y))
            sheet.paste(after, (x + THUMB + 4, y))
            draw.text((x, y + height - label_h - gap + 4), f"{status}: {cats}", fill=_STATUS_COLOUR.get(status, (0, 0, 0)))
        y += height
    png_path = os.path.join(out_dir, "preview.png")
    sheet.save(png_path)
    return {"html": html_path, "png": png_path}


def contact_sheet(columns: list[tuple[str, list]], row_labels: list[str] | None = None):
    """A PNG-ready sheet: one titled column per (title, images) pair, one row per image index, each row
    captioned with its label (e.g. the instruction). Images are PIL (None: an empty cell)."""
    from PIL import Image, ImageDraw

    rows = max((len(images) for _, images in columns), default=0)
    gap, title_h, label_h = 8, 18, 16
    cells = [[_thumb(images[i] if i < len(images) else None) for _, images in columns] for i in range(rows)]
    heights = [max(c.height for c in row) + label_h + gap for row in cells]
    sheet = Image.new("RGB", (len(columns) * (THUMB + gap) + gap, title_h + sum(heights) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (title, _) in enumerate(columns):
        draw.text((gap + j * (THUMB + gap), 4), title, fill=(0, 0, 0))
    y = title_h
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            sheet.paste(cell, (gap + j * (THUMB + gap), y))
        if row_labels:
            draw.text((gap, y + heights[i] - label_h - gap + 2), row_labels[i][:160], fill=(60, 60, 60))
        y += heights[i]
    return sheet
