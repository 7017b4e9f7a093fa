"""Labelled image grids and atomic PNG/GIF writes, shared by every picture ddcli draws."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ddcli.infra import io as _io
from ddcli.errors import ExportError
from ddcli.viz._pixels import to_uint8

INK = "black"
# between the parts of a cell caption ("3:.71  5:.20"); fit_caption drops parts at it
CAPTION_SEP = "  "
PAPER = "white"


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled default font: no system fonts, so the output is the same everywhere.
    return ImageFont.load_default(size=size)


def font_size(scale: int) -> int:
    return min(16, 8 + 2 * scale)


def fit_text(draw: ImageDraw.ImageDraw, text: str, fnt, width: float) -> str:
    """Shorten ``text`` with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=fnt) <= width:
        return text
    while text and draw.textlength(text + "…", font=fnt) > width:
        text = text[:-1]
    return text + "…" if text else ""


def fit_caption(draw: ImageDraw.ImageDraw, text: str, fnt, width: float) -> str:
    """Drop trailing ``CAPTION_SEP``-separated parts until ``text`` fits, then shorten the first."""
    parts = text.split(CAPTION_SEP)
    while len(parts) > 1 and draw.textlength(CAPTION_SEP.join(parts), font=fnt) > width:
        parts.pop()
    return fit_text(draw, CAPTION_SEP.join(parts), fnt, width)


def labelled_grid(
    cells: Tensor,
    *,
    scale: int,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    col_span: int = 1,
    cell_captions: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """Lay out ``cells`` (R, K, C, H, W) in [0, 1] as an R x K grid with text around it.

    Cells are upscaled ``scale`` times by pixel repetition (nearest neighbour) and
    separated by white padding; ``col_labels[g]`` is centred over columns
    ``g * col_span`` to ``(g + 1) * col_span - 1``; ``cell_captions[r][k]`` (R x K
    strings) is written under cell (r, k), shortened to its width. Grayscale input gives
    an "L" image.
    """
    rows, cols, c, h, w = cells.shape
    pad = max(2, scale)
    fs = font_size(scale)
    label_font, title_font, caption_font = font(fs), font(fs + 2), font(max(8, fs - 2))
    margin = max(4, fs // 2)
    cap_h = max(8, fs - 2) + 2 if cell_captions else 0
    body = _grid_body(cells, scale, pad, cap_h)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    title_h = fs + 2 + 2 * margin if title else 0
    col_h = fs + margin if col_labels else 0
    row_w = (
        int(max(probe.textlength(t, font=label_font) for t in row_labels)) + 2 * margin
        if row_labels else 0
    )
    title_w = int(probe.textlength(title, font=title_font)) + 2 * margin if title else 0
    width = max(row_w + body.width + (margin if row_labels else 0), title_w)
    canvas = Image.new(body.mode, (width, title_h + col_h + body.height), PAPER)
    canvas.paste(body, (row_w, title_h + col_h))

    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin, margin), title, fill=INK, font=title_font, anchor="la")
    cell_w, cell_h = w * scale + pad, h * scale + pad + cap_h
    for r, line in enumerate(cell_captions or ()):
        y = title_h + col_h + (r + 1) * cell_h + pad - 1  # the band under row r's cells
        for k, text in enumerate(line):
            x0 = row_w + pad + k * cell_w
            text = fit_caption(draw, text, caption_font, w * scale + pad)
            draw.text((x0 + w * scale / 2, y), text, fill=INK, font=caption_font, anchor="md")
    for g, text in enumerate(col_labels or ()):
        x0 = row_w + pad + g * col_span * cell_w
        span_w = col_span * cell_w - pad
        text = fit_text(draw, text, label_font, span_w)
        draw.text((x0 + span_w / 2, title_h + col_h - 2), text, fill=INK, font=label_font,
                  anchor="md")
    for r, text in enumerate(row_labels or ()):
        y = title_h + col_h + pad + r * cell_h + (h * scale) / 2
        draw.text((row_w - margin, y), text, fill=INK, font=label_font, anchor="rm")
    return canvas


def _grid_body(cells: Tensor, scale: int, pad: int, cap_h: int) -> Image.Image:
    """The cells alone, padded white; with ``cap_h``, a blank band that tall under each row."""
    from torchvision.utils import make_grid  # here: torchvision adds ~1 s to every `dd` start

    rows, cols, c, h, w = cells.shape
    x = cells.reshape(rows * cols, c, h, w).clamp(0, 1)
    x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)  # (R*K, C, hs, ws)
    mode = "L" if c == 1 else "RGB"

    def image(t: Tensor, nrow: int) -> Image.Image:
        grid = make_grid(t, nrow=nrow, padding=pad, pad_value=1.0)  # (3, GH, GW); grey -> 3 copies
        pixels, _ = to_uint8(grid[:1] if c == 1 else grid)
        arr = pixels.permute(1, 2, 0).numpy()  # (GH, GW, C)
        return Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode=mode)

    if not cap_h:
        return image(x, cols)
    # one strip per row, each followed by its caption band; strips share their padding
    pitch = h * scale + pad + cap_h
    strips = [image(x[r * cols : (r + 1) * cols], cols) for r in range(rows)]
    body = Image.new(mode, (strips[0].width, rows * pitch + pad), PAPER)
    for r, strip in enumerate(strips):
        body.paste(strip, (0, r * pitch))
    return body


def pad_to(images: Sequence[Image.Image]) -> list[Image.Image]:
    """Paste images onto white canvases of their common largest size (GIF frames)."""
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    out = []
    for im in images:
        if im.size != (w, h):
            framed = Image.new(im.mode, (w, h), PAPER)
            framed.paste(im, (0, 0))
            im = framed
        out.append(im)
    return out


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically; no timestamps, so equal images give equal bytes."""
    _write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
    return Path(path)


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, *,
             duration_ms: int = 600) -> Path:
    """Write an endlessly looping animated GIF atomically."""
    frames = pad_to(frames)
    _write(path, lambda tmp: frames[0].save(
        tmp, format="GIF", save_all=True, append_images=list(frames[1:]),
        duration=duration_ms, loop=0))
    return Path(path)


def _write(path: str | os.PathLike, writer) -> None:
    try:
        _io.write_with(path, writer)
    except OSError as exc:
        raise ExportError(f"can't write {path}: {exc.strerror or exc}") from None
