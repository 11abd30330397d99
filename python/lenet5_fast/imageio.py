"""Reading a photo or scan of one handwritten digit and normalising it as MNIST was made, and
drawing a gallery of digits (the paper's Fig. 8).

Finding the digit in a photo (:func:`find_ink`):

1. the image is read lazily: its size is checked before anything is decoded (decompression
   bombs are refused), JPEGs are decoded at a reduced scale (``Image.draft``), the EXIF
   orientation is applied, and it is shrunk to at most :data:`WORK_SIZE` pixels a side;
2. colour becomes grey (luminance); where there is transparency the image is laid on the
   background that contrasts with its opaque pixels, so light ink on a transparent PNG works;
3. the paper is estimated and removed: a grey morphological closing (opening, for light ink
   on dark paper) with a window wider than any stroke keeps lighting gradients, shadows and the
   paper's colour and drops the strokes; the image is divided by it (subtracted, for light
   ink), which leaves the ink's strength, 0 on paper;
4. the ink is picked by Otsu's threshold on that map (refused when ink and paper are not
   clearly apart: a blank page is "no digit"); of its 8-connected components the one that is
   large and near the centre, away from the image border, is the digit, together with the
   components close to it (broken strokes); specks, border lines and far-away marks go; another
   mark as tall as the digit beside it is reported (``Ink.several``). When the digit touches
   the border (cropped tightly), it is looked for again with a margin of paper added;
5. strokes much bolder than MNIST's are eroded towards MNIST's width.

Then MNIST's recipe: the digit's bounding box is scaled to fit 20x20 keeping its aspect ratio
(anti-aliased, so grey levels appear), and placed in a 28x28 field so that its centre of mass
is at the centre. The network's input pads that to 32x32 (:func:`lenet5_fast.data.preprocess`).

Decoding image files needs pillow, finding the ink needs scipy (``pip install
'lenet5_fast[predict]'``).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import preprocess

__all__ = ["ImageError", "NoDigit", "MAX_PIXELS", "WORK_SIZE", "Ink", "Digit", "read_image", "to_grey",
           "find_ink", "prepare_digit", "normalize_digit", "read_digit", "load_digit", "save_input_png",
           "save_gallery"]

MAX_PIXELS = 50_000_000     # larger images are refused before decoding (a 20000x20000 PNG is 400M)
WORK_SIZE = 400             # the ink is looked for at this many pixels along the longest side
_MIN_CONTRAST = 0.12        # ink must differ from the paper by this much (of the paper's brightness)
_MNIST_STROKE = 3.5         # stroke width (pixels, digit 20 tall) that bold strokes are eroded to
_BOLD_STROKE = 4.0          # ... when wider than this (MNIST: median 2.8, 95th percentile 4.5)


class ImageError(ValueError):
    """An image file that cannot be read, is too large, or holds NaN/infinite pixels."""


class NoDigit(ImageError):
    """Nothing in the image stands out of the paper as a digit would (blank page, noise)."""


class _NoContrast(NoDigit):
    """No ink stands out of the paper at all (as opposed to marks found only on the border)."""


class Ink(NamedTuple):
    """What :func:`find_ink` found: ``ink`` [h, w] in [0, 1] (1 = full ink) cropped to the
    digit's bounding box, ``box`` = (top, left, bottom, right) in the working image, whose size
    is ``shape``; ``dark_ink`` says whether the ink was darker than the paper; ``several`` that
    another mark as large as the digit stands beside it (two digits, a word)."""
    ink: np.ndarray
    box: tuple
    shape: tuple
    dark_ink: bool
    several: bool = False    # another mark of the digit's size beside it: more than one digit?


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        from .train import MissingExtra

        raise MissingExtra("pillow is not installed; install it with `pip install 'lenet5_fast[predict]'` "
                           "to read and write images") from e
    return Image


def _ndimage():
    try:
        from scipy import ndimage
    except ImportError as e:
        from .train import MissingExtra

        raise MissingExtra("scipy is not installed; install it with `pip install 'lenet5_fast[predict]'` "
                           "to find digits in photos") from e
    return ndimage


# ---------------------------------------------------------------------------------------------
# reading

def read_image(path, work_size: int = WORK_SIZE) -> np.ndarray:
    """An image file as float pixels in [0, 1]: [H, W] grey, or [H, W, 3|4] RGB(A), at most
    ``work_size`` pixels a side (shrunk, anti-aliased). Images over :data:`MAX_PIXELS` are
    refused before they are decoded. Raises :class:`ImageError` naming the file."""
    Image = _pil()
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    if path.exists() and not path.is_file():
        raise ImageError(f"{path} is not a regular file (a device, pipe or socket), not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():
            # the decoders' warnings (corrupt EXIF, a large image: refused below, by size) are
            # not the user's business; what goes wrong is raised, naming the file
            warnings.simplefilter("ignore")
            with _open_unbounded(Image, path) as im:
                if im.format == "JPEG":          # decode at 1/2, 1/4 or 1/8 scale when that is enough
                    im.draft(im.mode, (work_size, work_size))
                w, h = im.size                   # for a JPEG: the size it will be decoded at
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{path}: the image is {w}x{h} = {w * h / 1e6:.0f} megapixels, more than "
                                     f"the {MAX_PIXELS / 1e6:.0f} allowed (a decompression bomb?); refused without "
                                     "decoding it")
                if w < 1 or h < 1:
                    raise ImageError(f"{path}: empty image")
                im.load()
                a = _pixels(_shrink(_exif_upright(im), work_size))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb: {e}") from e
    except Exception as e:  # a decoder may raise anything on a corrupt or hostile file: name the file
        raise ImageError(f"cannot read {path} as an image: {type(e).__name__}: {e}") from e
    if not np.isfinite(a).all():
        raise ImageError(f"{path}: the image holds NaN or infinite pixel values")
    return a


def _open_unbounded(Image, path):
    """``Image.open`` (lazy: reads the header) without Pillow's own pixel limit, which would refuse
    a 200-megapixel phone JPEG that decodes at 1/8 scale: :func:`read_image` applies
    :data:`MAX_PIXELS` to the size it decodes at."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _exif_upright(im):
    """Phones store the camera's orientation in EXIF: apply it."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a damaged EXIF block: use the pixels as stored
        return im


def _shrink(im, work_size: int):
    """The PIL image reduced (box filter, integer factor, cheap) then resized so that its
    longest side is at most ``work_size``; palette/odd modes become L, LA, RGB, RGBA, I or F."""
    if im.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa", "RGBX"):
        has_alpha = im.mode in ("PA", "La", "RGBa") or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif im.mode.startswith("I;16") or im.mode == "I":
        im = im.convert("I")
    f = max(im.size) // work_size
    if f >= 2:
        im = im.reduce(f)
    if max(im.size) > work_size:
        s = work_size / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), resample=2)  # bilinear
    return im


def _pixels(im) -> np.ndarray:
    """A decoded PIL image as float64 in [0, 1]."""
    a = np.asarray(im)
    if im.mode == "I":       # 16- or 32-bit integers: scale by the format's range
        a = a.astype(np.float64)
        return a / (65535.0 if a.max(initial=0) <= 65535 else float(a.max()))
    if im.mode == "F":       # float images (TIFF): NaN/inf are refused by the caller
        a = a.astype(np.float64)
        if np.isfinite(a).all():
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) if hi > 1.0 or lo < 0.0 else a
        return a
    return a.astype(np.float64) / 255.0


def to_grey(image) -> np.ndarray:
    """Pixels [H, W], [H, W, 1|2|3|4] (grey, grey+alpha, RGB, RGBA; uint8 0..255 or float 0..1)
    -> grey [H, W] float64 in [0, 1]. Colour becomes luminance. With transparency the picture
    is laid on black or white, whichever contrasts with its opaque pixels: ink drawn on a
    transparent background is then ink on paper whatever its colour."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float64) / 255.0
    elif a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"expected numeric pixels, got {a.dtype}")
    else:
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("the image holds NaN or infinite pixel values")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        grey, alpha = a, None
    elif a.ndim == 3 and a.shape[2] in (2, 3, 4):
        colour = a[:, :, :a.shape[2] - (a.shape[2] in (2, 4))]
        alpha = a[:, :, -1] if a.shape[2] in (2, 4) else None
        grey = colour[:, :, 0] if colour.shape[2] == 1 else colour @ np.array([0.299, 0.587, 0.114])
    else:
        raise ValueError(f"expected a grey [H, W] or colour [H, W, 3|4] image, got shape {a.shape}")
    if min(grey.shape) < 1:
        raise ValueError(f"empty image of shape {a.shape}")
    if alpha is not None and alpha.min() < 0.95:
        weight = alpha.sum()
        opaque_level = float((grey * alpha).sum() / weight) if weight > 0 else 0.0
        backdrop = 0.0 if opaque_level > 0.5 else 1.0
        grey = grey * alpha + backdrop * (1.0 - alpha)
    return np.clip(grey, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# finding the ink

def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _polarity(smooth: np.ndarray) -> bool:
    """True when the ink is darker than the paper: the paper is most of the picture, so the
    median is nearer the paper's end of the range. Dark ink unless the median is clearly at the
    dark end (a digit cropped tightly can be half ink: then dark ink, the common case, wins)."""
    lo, mid, hi = np.percentile(smooth, [0.5, 50, 99.5])
    return bool(2.0 * (mid - lo) >= (hi - mid))


def _ink_map(smooth: np.ndarray, dark_ink: bool, win: int, nd) -> np.ndarray:
    """Ink strength [H, W] in [0, 1], 0 on paper: the paper is the grey closing (dark ink) or
    opening (light ink) over a ``win`` x ``win`` window, which removes strokes narrower than
    the window and keeps lighting gradients, steps and the paper's colour; dark ink is measured
    relative to the paper (background division), light ink as its excess over it."""
    if dark_ink:
        paper = nd.grey_closing(smooth, size=(win, win), mode="reflect")
        paper = np.maximum(nd.gaussian_filter(paper, win / 4), smooth)
        ink = 1.0 - smooth / np.maximum(paper, 1e-3)
    else:
        paper = nd.grey_opening(smooth, size=(win, win), mode="reflect")
        paper = np.minimum(nd.gaussian_filter(paper, win / 4), smooth)
        ink = smooth - paper
    return np.clip(ink, 0.0, 1.0)


def _threshold(ink: np.ndarray) -> float:
    """Otsu's threshold of the ink map, raised above the paper's noise; ValueError when ink
    and paper are not clearly apart."""
    t = _otsu(ink)
    above = ink > t
    if not above.any() or above.all():
        raise _NoContrast("no digit found (the image has almost no contrast)")
    # the paper's level and noise, robustly (median, median absolute deviation): the
    # anti-aliased edges of the strokes are not paper noise
    paper = ink[~above]
    ink_level, paper_level = float(np.median(ink[above])), float(np.median(paper))
    paper_spread = 1.4826 * float(np.median(np.abs(paper - paper_level)))
    if ink_level - paper_level < _MIN_CONTRAST or ink_level - paper_level < 6.0 * paper_spread:
        raise _NoContrast(f"no digit found (ink and paper differ by {ink_level - paper_level:.2f}, "
                         f"paper noise {paper_spread:.2f})")
    return max(t, paper_level + 3.0 * paper_spread)


class _Components(NamedTuple):
    labels: np.ndarray
    kept: list           # labels of the digit's components
    main: int            # label of the main one
    several: bool        # another mark of the digit's size beside it


def _components(mask: np.ndarray, pad: int, nd) -> _Components:
    """The digit among the 8-connected components of the ink mask (the image with a margin of
    ``pad`` pixels around it): the one that is large, central and off the image's border (paper
    edges, a band along a border, are never the digit), plus the pieces near it that are not
    specks."""
    labels, n = nd.label(mask, structure=np.ones((3, 3)))
    h, w = labels.shape
    boxes = nd.find_objects(labels)
    area = nd.sum_labels(np.ones_like(labels), labels, np.arange(1, n + 1)) if n else np.zeros(0)
    score = np.zeros(n)
    for k, (ys, xs) in enumerate(boxes):
        bh, bw = ys.stop - ys.start, xs.stop - xs.start
        top, bottom, left, right = ys.start <= pad, ys.stop >= h - pad, xs.start <= pad, xs.stop >= w - pad
        # a band along a border, or a long line close to one and parallel to it: the edge of
        # the sheet, its shadow, the table, a ruler; never the digit
        H, W, y0, y1, x0, x1 = h - 2 * pad, w - 2 * pad, ys.start - pad, ys.stop - pad, xs.start - pad, xs.stop - pad
        band = ((bw >= 0.6 * W and bh <= 0.25 * H and (y0 <= 0.2 * H or y1 >= 0.8 * H))
                or (bh >= 0.6 * H and bw <= 0.25 * W and (x0 <= 0.2 * W or x1 >= 0.8 * W)))
        if band:
            continue
        d = np.hypot((ys.start + ys.stop - 1) / 2 / h - 0.5, (xs.start + xs.stop - 1) / 2 / w - 0.5)
        score[k] = area[k] * math.exp(-(d / 0.35) ** 2) * (0.1 if (top or bottom or left or right) else 1.0)
    if n == 0 or score.max() <= 0:
        raise NoDigit("no digit found (only marks along the image's border)")
    main = int(np.argmax(score))
    main_on_border = _on_border(boxes[main], h, w, pad)
    kept = {main}
    t, l, b, r = boxes[main][0].start, boxes[main][1].start, boxes[main][0].stop, boxes[main][1].stop
    several = False
    grew = True
    while grew:                          # add the pieces within reach of the digit so far
        grew = False
        m = 0.3 * max(b - t, r - l)
        for k, (ys, xs) in enumerate(boxes):
            if k in kept or score[k] <= 0 or area[k] < 0.03 * area[main] or (_on_border(boxes[k], h, w, pad)
                                                                              and not main_on_border):
                continue
            if ys.start < b + m and ys.stop > t - m and xs.start < r + m and xs.stop > l - m:
                kept.add(k)
                t, l = min(t, ys.start), min(l, xs.start)
                b, r = max(b, ys.stop), max(r, xs.stop)
                grew = True
    # another mark as large as the digit, side by side with it: several characters
    mh, mw = boxes[main][0].stop - boxes[main][0].start, boxes[main][1].stop - boxes[main][1].start
    for k, (ys, xs) in enumerate(boxes):
        if k == main or score[k] <= 0 or area[k] < 0.2 * area[main] or area[main] < 0.2 * area[k]:
            continue
        kh = ys.stop - ys.start
        overlap_y = min(ys.stop, boxes[main][0].stop) - max(ys.start, boxes[main][0].start)
        gap_x = max(xs.start - boxes[main][1].stop, boxes[main][1].start - xs.stop)
        if kh >= 0.6 * mh and mh >= 0.6 * kh and overlap_y >= 0.5 * min(kh, mh) and 0 <= gap_x <= 3 * max(mh, mw):
            several = True
    return _Components(labels, [k + 1 for k in sorted(kept)], main + 1, several)


def _on_border(box, h, w, pad) -> bool:
    ys, xs = box
    return ys.start <= pad or xs.start <= pad or ys.stop >= h - pad or xs.stop >= w - pad


def _stroke_width(mask: np.ndarray, nd) -> float:
    """Stroke width of a binary shape: twice the 90th percentile of the distance from its
    pixels to the background (a bar w wide has distances up to w/2)."""
    if not mask.any():
        return 0.0
    dist = nd.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return 2.0 * float(np.percentile(dist[mask], 90))


def _thin_strokes(crop: np.ndarray, mask: np.ndarray, nd) -> np.ndarray:
    """Strokes much bolder than MNIST's (width, by :func:`_stroke_width`, over 4 pixels once the
    digit is 20 pixels tall; MNIST's median is 2.8) are eroded towards 3.5, by at most 30% of
    their width: a bold 9's loop and tail then stay apart."""
    scale = 20.0 / max(crop.shape)
    width = _stroke_width(mask, nd)
    radius = min((width - _MNIST_STROKE / scale) / 2, 0.3 * width)
    if width * scale <= _BOLD_STROKE or radius < 0.75:
        return crop
    r = int(round(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return nd.grey_erosion(crop, footprint=(yy ** 2 + xx ** 2) <= r * r + 0.5, mode="constant", cval=0.0)


def find_ink(image) -> Ink:
    """Finds the digit in a photo or scan (pixels as :func:`to_grey` takes them, any size) and
    returns its ink map cropped to its bounding box (see the module's doc for the steps).
    Raises ValueError ("no digit found") when nothing stands out of the paper."""
    nd = _ndimage()
    g = to_grey(image)
    if max(g.shape) > WORK_SIZE:
        s = WORK_SIZE / max(g.shape)
        size = (max(1, round(g.shape[0] * s)), max(1, round(g.shape[1] * s)))
        g = F.interpolate(torch.from_numpy(g)[None, None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].numpy()
    if min(g.shape) < 4:
        raise NoDigit(f"no digit found: the image is only {g.shape[1]}x{g.shape[0]} pixels")
    dark_ink = _polarity(nd.gaussian_filter(g, 0.7))
    try:
        found, on_border = _find_ink(g, 0, dark_ink, nd)
    except _NoContrast:
        raise
    except NoDigit:
        found, on_border = None, True
    if on_border:
        # the digit touches the image's border, or nothing was found off it: perhaps a tight
        # crop; try again with a margin of paper around the image
        paper = float(np.percentile(g, 90 if dark_ink else 10))
        pad = max(2, int(round(0.1 * max(g.shape))))
        try:
            found, _ = _find_ink(np.pad(g, pad, mode="constant", constant_values=paper), pad, dark_ink, nd)
        except NoDigit:
            if found is None:
                raise
    return found


def _find_ink(g: np.ndarray, pad: int, dark_ink: bool, nd):
    """find_ink's work on grey ``g`` that has ``pad`` pixels of added margin -> (Ink, whether
    the digit touches the image's border)."""
    smooth = nd.gaussian_filter(g, 0.7)
    # first with a window a quarter of the image wide (wider than any stroke), then with one a
    # few strokes wide, which follows the paper's shading more closely
    win = max(5, int(round(min(g.shape) / 4)) | 1)
    for attempt in range(2):
        ink = _ink_map(smooth, dark_ink, win, nd)
        t = _threshold(ink)
        comp = _components(ink > t, pad, nd)
        narrower = max(5, int(round(4 * _stroke_width(comp.labels == comp.main, nd))) | 1)
        if attempt == 1 or narrower >= 0.8 * win:
            break
        win = narrower
    digit = np.isin(comp.labels, comp.kept)
    rows, cols = np.nonzero(digit)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    # the ink's anti-aliased edge around the kept strokes, nothing else
    near = nd.binary_dilation(digit, structure=np.ones((3, 3)), iterations=2)
    crop = np.where(near, ink, 0.0)[top:bottom, left:right]
    full = float(np.percentile(ink[digit], 90))
    crop = np.clip((crop - 0.5 * t) / max(full - 0.5 * t, 1e-6), 0.0, 1.0)
    crop = _thin_strokes(crop, digit[top:bottom, left:right], nd)
    h, w = g.shape[0] - 2 * pad, g.shape[1] - 2 * pad
    box = (int(np.clip(top - pad, 0, h)), int(np.clip(left - pad, 0, w)), int(np.clip(bottom - pad, 0, h)),
           int(np.clip(right - pad, 0, w)))
    on_border = top <= pad or left <= pad or bottom >= g.shape[0] - pad or right >= g.shape[1] - pad
    return Ink(crop, box, (h, w), dark_ink, comp.several), bool(on_border)


# ---------------------------------------------------------------------------------------------
# MNIST's recipe

def _mnist_field(ink: np.ndarray) -> np.ndarray:
    """An ink map [h, w] in [0, 1] cropped to the digit -> 28x28 uint8, MNIST's recipe."""
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        raise NoDigit("no digit found")
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = ink.shape
    f = 20.0 / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    t = torch.from_numpy(np.ascontiguousarray(ink, dtype=np.float64))[None, None]
    box = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    box = np.clip(box, 0.0, 1.0)
    mass = box.sum()
    if not mass > 0:
        raise NoDigit("no digit found")
    cy = (box.sum(1) * np.arange(nh)).sum() / mass
    cx = (box.sum(0) * np.arange(nw)).sum() / mass
    top, left = int(round(14.0 - cy)), int(round(14.0 - cx))  # MNIST: centre of mass at (14, 14)
    field = np.zeros((28, 28))
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(28, top + nh), min(28, left + nw)
    field[y0:y1, x0:x1] = box[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.round(field * 255.0).astype(np.uint8)


class Digit(NamedTuple):
    """A digit found in an image: the network's ``input`` float32 [1, 1, 32, 32], and what was
    found (``ink``; ``ink.several``: another mark as large as the digit beside it)."""
    input: torch.Tensor
    ink: Ink


def prepare_digit(image) -> Digit:
    """Pixels of a photo or scan of one digit -> :class:`Digit` (see :func:`normalize_digit`)."""
    ink = find_ink(image)
    return Digit(preprocess(_mnist_field(ink.ink)), ink)


def normalize_digit(image) -> np.ndarray:
    """Pixels of a photo or scan of one digit ([H, W] grey or [H, W, 3|4] colour, uint8 or float
    in [0, 1]; dark ink on light paper or the reverse) -> a 28x28 uint8 MNIST-style digit:
    white ink (255) on black, bounding box fitted into 20x20 keeping the aspect ratio, centre
    of mass at the centre of the field. Raises ValueError when no digit is found."""
    return _mnist_field(find_ink(image).ink)


def read_digit(path) -> Digit:
    """An image file of one handwritten digit -> :class:`Digit`. Raises :class:`ImageError`
    (a ValueError) naming the file when it cannot be read or holds no digit."""
    image = read_image(path)
    try:
        return prepare_digit(image)
    except NoDigit as e:
        raise NoDigit(f"{path}: {e}") from e


def load_digit(path) -> torch.Tensor:
    """An image file of one handwritten digit -> the network's input, float32 [1, 1, 32, 32]."""
    return read_digit(path).input


def save_input_png(path, x: torch.Tensor) -> None:
    """The network's input [1, 1, 32, 32] (or [32, 32]) as a 32x32 grey PNG, ink white on black
    as the network sees it (written atomically)."""
    from .checkpoint import atomic_write_bytes
    from .data import PAPER_BACKGROUND, PAPER_INK

    Image = _pil()
    a = x.detach().float().cpu().reshape(x.shape[-2], x.shape[-1]).numpy()
    a = np.clip((a - PAPER_BACKGROUND) / (PAPER_INK - PAPER_BACKGROUND), 0.0, 1.0)
    im = Image.fromarray(np.round(a * 255).astype(np.uint8), mode="L")
    atomic_write_bytes(path, lambda f: im.save(f, format="PNG"))


def save_gallery(path, images: torch.Tensor, captions: Sequence[str], cols: int = 10,
                 title: str = "") -> None:
    """A PNG grid of digits ``images[N, 1, H, W]`` (network inputs or uint8) with a caption under
    each, like the paper's Fig. 8 of misclassified test digits. Needs matplotlib."""
    from .checkpoint import atomic_write_bytes
    from .train import _pyplot

    plt = _pyplot()
    n = len(captions)
    if images.shape[0] != n:
        raise ValueError("save_gallery: one caption per image")
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.25 + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k, 0].float().cpu().numpy(), cmap="gray_r", interpolation="nearest")
            ax.set_title(captions[k], fontsize=8, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
