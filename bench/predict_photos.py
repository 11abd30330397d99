"""`predict` on generated photos of digits: per-family accuracy and rejection of non-digits.

Makes its own images (nothing is downloaded): digits in many fonts, and MNIST test digits (real
handwriting) drawn as ink, under the conditions of a photo or scan (sizes, rotations, blur,
JPEG, lighting gradients and noise, shadows at the paper's edge, coloured paper and ink, RGBA
with dark or light ink on transparency, thick and thin strokes, off-centre, chalk on a board),
plus non-digits (noise, letters, two digits, blank paper, scribbles). Stroke widths (twice the 90th percentile
of the distance to the paper, over the ink's height; medians): regular fonts 11%, bold fonts 17%,
"thick strokes" (a regular font outlined 3-8 units of 200 on each side) 17%, "very thick" (9-13
units) 22%, where the tail of a 9 or 6 merges with its loop; MNIST's digits 14%. Every image is written
to a file and read back through `lenet5_fast.imageio.read_digit`, as `lenet5-fast predict`
does. Prints a Markdown table and writes JSON.

    python bench/predict_photos.py [--weights paper-distort] [--out bench/results/predict_photos.json]

Without --weights or --checkpoint it measures what `lenet5-fast predict` does by default: the
ensemble of the shipped networks (the mixture of their posteriors, `confidence.Ensemble`). It
also reports, for the same model and threshold, the share of the MNIST test set (the 10,000
digits as tensors, no photo) accepted and the paper's rejection for 0.5% error.

Fonts: DejaVu (fonts-dejavu-core), Liberation (fonts-liberation), FreeFont (fonts-freefont-ttf),
URW base35 (fonts-urw-base35); those not installed are skipped and listed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
import torch

from lenet5_fast import confidence as C, weights
from lenet5_fast.checkpoint import model_from_checkpoint
from lenet5_fast.imageio import read_digit

FONT_FILES = [
    "truetype/dejavu/DejaVuSans.ttf", "truetype/dejavu/DejaVuSerif.ttf", "truetype/dejavu/DejaVuSansMono.ttf",
    "truetype/dejavu/DejaVuSans-Bold.ttf", "truetype/dejavu/DejaVuSerif-Italic.ttf",
    "truetype/liberation/LiberationSans-Regular.ttf", "truetype/liberation/LiberationSerif-Regular.ttf",
    "truetype/liberation/LiberationMono-Regular.ttf", "truetype/liberation/LiberationSansNarrow-Regular.ttf",
    "truetype/freefont/FreeSans.ttf", "truetype/freefont/FreeSerif.ttf", "truetype/freefont/FreeMono.ttf",
    "opentype/urw-base35/NimbusSans-Regular.otf", "opentype/urw-base35/NimbusRoman-Regular.otf",
    "opentype/urw-base35/URWGothic-Book.otf", "opentype/urw-base35/URWBookman-Light.otf",
    "opentype/urw-base35/C059-Roman.otf", "opentype/urw-base35/P052-Roman.otf",
    "opentype/urw-base35/NimbusSans-Italic.otf", "opentype/urw-base35/Z003-MediumItalic.otf",
]
THIN_FONTS = ["truetype/dejavu/DejaVuSans-ExtraLight.ttf", "opentype/urw-base35/URWBookman-Light.otf",
              "truetype/freefont/FreeMono.ttf", "truetype/liberation/LiberationMono-Regular.ttf"]
CANVAS = 240   # the ink layer's side before the photo is made


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fonts(names):
    found, missing = [], []
    for n in names:
        p = Path("/usr/share/fonts") / n
        (found if p.exists() else missing).append(p)
    return found, missing


# ---------------------------------------------------------------------------------------------
# ink layers: float [H, W] in [0, 1], 1 = ink

def text_ink(text, font_path, height_frac=0.65, stroke=0, rotate=0.0, size=(CANVAS, CANVAS), offset=(0, 0)):
    """``text`` drawn so that its ink is ``height_frac`` of the canvas tall, centred (+ offset)."""
    w, h = size
    big = Image.new("L", (w * 2, h * 2), 0)
    font = ImageFont.truetype(str(font_path), 200)
    d = ImageDraw.Draw(big)
    box = d.textbbox((0, 0), text, font=font, stroke_width=stroke)
    scale = height_frac * h / max(1, box[3] - box[1])
    font = ImageFont.truetype(str(font_path), max(8, int(200 * scale)))
    stroke = int(round(stroke * scale))
    box = d.textbbox((0, 0), text, font=font, stroke_width=stroke)
    x = w - (box[0] + box[2]) / 2 + offset[0] * 2
    y = h - (box[1] + box[3]) / 2 + offset[1] * 2
    d.text((x, y), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if rotate:
        big = big.rotate(rotate, resample=Image.BICUBIC, center=(w, h))
    small = big.resize(size, Image.LANCZOS)
    return np.asarray(small, dtype=np.float64) / 255.0


def mnist_ink(digit28, height_frac=0.65, rotate=0.0, size=(CANVAS, CANVAS), offset=(0, 0)):
    """An MNIST digit (its 20x20 box is the digit) enlarged so that the box is ``height_frac``
    of the canvas tall."""
    w, h = size
    s = height_frac * h / 20.0
    im = Image.fromarray(digit28).resize((round(28 * s), round(28 * s)), Image.BICUBIC)
    canvas = Image.new("L", size, 0)
    canvas.paste(im, (int(w / 2 - im.width / 2 + offset[0]), int(h / 2 - im.height / 2 + offset[1])))
    if rotate:
        canvas = canvas.rotate(rotate, resample=Image.BICUBIC)
    return np.asarray(canvas, dtype=np.float64) / 255.0


# ---------------------------------------------------------------------------------------------
# photo conditions: ink layer -> a PIL image

def lighting(shape, rng, strength):
    """A multiplicative lighting field: a linear gradient at a random angle and a vignette."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(a) * xx + np.sin(a) * yy)
    ramp = (ramp - ramp.min()) / max(1e-9, ramp.max() - ramp.min())
    vignette = ((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2) / 0.5
    return np.clip(1.0 - strength * ramp - 0.3 * strength * vignette, 0.05, 1.0)


def compose(ink, rng, paper=(1, 1, 1), ink_rgb=(0, 0, 0), light=0.0, noise=0.0, blur=0.0, shadow=False,
            rgba=None, pad=0.0):
    """Paper of colour ``paper`` with ink of colour ``ink_rgb``; then lighting, an edge shadow,
    blur and noise. ``rgba``: 'dark' or 'light' ink on a transparent background instead."""
    if pad:
        p = int(pad * ink.shape[0])
        ink = np.pad(ink, p)
    if rgba:
        rgb = np.zeros(ink.shape + (4,))
        rgb[..., :3] = 0.0 if rgba == "dark" else 1.0
        rgb[..., 3] = ink
        return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGBA")
    paper, ink_rgb = np.asarray(paper, float), np.asarray(ink_rgb, float)
    img = paper * (1 - ink[..., None]) + ink_rgb * ink[..., None]
    if light:
        img = img * lighting(ink.shape, rng, light)[..., None]
    if shadow:      # the sheet's edge: a dark table beyond it, a soft shadow along it
        h, w = ink.shape
        side = rng.integers(4)
        width = int(rng.uniform(0.06, 0.14) * w)
        yy, xx = np.mgrid[0:h, 0:w]
        dist = [xx, w - 1 - xx, yy, h - 1 - yy][side].astype(float)
        table = dist < width
        soft = np.clip((dist - width) / (0.12 * w), 0, 1)
        img = img * (0.55 + 0.45 * soft)[..., None]
        img[table] = np.asarray([0.25, 0.2, 0.15]) * rng.uniform(0.6, 1.2)
    if blur:
        pil = Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64) / 255
    if noise:
        img = img + rng.normal(0, noise, img.shape)
    return Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")


def save(im, path, jpeg=None):
    if jpeg:
        im.convert("RGB").save(path.with_suffix(".jpg"), quality=int(jpeg))
        return path.with_suffix(".jpg")
    im.save(path.with_suffix(".png"))
    return path.with_suffix(".png")


PAPERS = [((0.93, 0.87, 0.72), (0.1, 0.15, 0.55)),   # beige paper, blue ink
          ((0.98, 0.95, 0.6), (0.1, 0.1, 0.1)),      # yellow note, black
          ((0.75, 0.88, 0.78), (0.55, 0.08, 0.1)),   # green paper, red ink
          ((0.95, 0.8, 0.85), (0.05, 0.2, 0.1)),     # pink paper, dark green
          ((0.85, 0.85, 0.85), (0.2, 0.2, 0.5))]     # grey paper, blue-grey pencil

# family -> (ink layer kwargs, compose kwargs, jpeg quality); drawn per image with the rng
def family_params(name, rng):
    r = rng.uniform
    if name == "clean":
        return dict(height_frac=r(0.5, 0.8)), dict(), None
    if name == "small, off-centre":
        return (dict(height_frac=r(0.12, 0.25), size=(480, 360), offset=(r(-120, 120), r(-80, 80))),
                dict(noise=0.02), None)
    if name == "rotated +-15 deg":
        return dict(height_frac=r(0.5, 0.7), rotate=r(-15, 15)), dict(), None
    if name == "blur + JPEG":
        return dict(height_frac=r(0.5, 0.7)), dict(blur=r(1.5, 3.5)), r(15, 40)
    if name == "lighting + noise":
        return dict(height_frac=r(0.4, 0.7)), dict(paper=(0.95,) * 3, light=r(0.4, 0.7), noise=r(0.04, 0.08)), None
    if name == "edge shadow + noise":
        return (dict(height_frac=r(0.35, 0.55), offset=(r(-20, 20), r(-20, 20))),
                dict(paper=(0.92,) * 3, shadow=True, light=r(0.1, 0.3), noise=r(0.02, 0.05)), r(60, 90))
    if name == "coloured paper (RGB)":
        paper, ink = PAPERS[rng.integers(len(PAPERS))]
        return dict(height_frac=r(0.4, 0.7)), dict(paper=paper, ink_rgb=ink, light=r(0.1, 0.4), noise=0.03), r(50, 90)
    if name == "RGBA, dark ink":
        return dict(height_frac=r(0.5, 0.7)), dict(rgba="dark"), None
    if name == "RGBA, light ink":
        return dict(height_frac=r(0.5, 0.7)), dict(rgba="light"), None
    if name == "chalk on board":
        return (dict(height_frac=r(0.4, 0.7)),
                dict(paper=(0.12, 0.2, 0.15), ink_rgb=(0.9, 0.9, 0.85), light=r(0.1, 0.4), noise=0.04), r(50, 90))
    raise KeyError(name)


FONT_FAMILIES = ["clean", "small, off-centre", "rotated +-15 deg", "blur + JPEG", "lighting + noise",
                 "edge shadow + noise", "coloured paper (RGB)", "RGBA, dark ink", "RGBA, light ink", "chalk on board"]
MNIST_FAMILIES = ["clean", "small, off-centre", "lighting + noise", "edge shadow + noise", "coloured paper (RGB)",
                  "RGBA, light ink", "chalk on board"]
LETTERS = [c for c in "ACEFHJKLMNPRTUVWXY"]   # not B D G I O Q S Z (shaped like 8 0 6 1 0 0 5 2)


def make_sets(tmp: Path, rng, font_paths, thin_paths, mnist_images, mnist_labels, per_family: int):
    """{set name: [(path, label or None)]}."""
    sets = {}

    def add(set_name, k, im, jpeg, label):
        items = sets.setdefault(set_name, [])
        slug = "".join(c if c.isalnum() else "_" for c in set_name)
        items.append((save(im, tmp / f"{slug}-{k:04d}", jpeg), label))

    for fam in FONT_FAMILIES:
        for k in range(per_family):
            digit, font = k % 10, font_paths[(k // 10 + k) % len(font_paths)]
            ink_kw, comp_kw, jpeg = family_params(fam, rng)
            add(f"fonts: {fam}", k, compose(text_ink(str(digit), font, **ink_kw), rng, **comp_kw), jpeg, digit)
    for k in range(per_family):
        digit, font = k % 10, font_paths[(k // 10 + k) % len(font_paths)]
        add("fonts: thick strokes", k, compose(text_ink(str(digit), font, stroke=rng.integers(3, 9),
                                                        height_frac=rng.uniform(0.5, 0.7)), rng), None, digit)
        add("fonts: very thick strokes", k, compose(text_ink(str(digit), font, stroke=rng.integers(9, 14),
                                                             height_frac=rng.uniform(0.5, 0.7)), rng), None, digit)
        tf = thin_paths[k % len(thin_paths)]
        add("fonts: thin strokes", k, compose(text_ink(str(digit), tf, height_frac=rng.uniform(0.6, 0.8)), rng),
            None, digit)
    order = rng.permutation(len(mnist_images))
    for fam in MNIST_FAMILIES:
        for k in range(per_family):
            i = int(order[k + per_family * MNIST_FAMILIES.index(fam)])
            ink_kw, comp_kw, jpeg = family_params(fam, rng)
            ink_kw.pop("rotate", None)
            add(f"MNIST test digits: {fam}", k, compose(mnist_ink(mnist_images[i], **ink_kw), rng, **comp_kw),
                jpeg, int(mnist_labels[i]))
    for k in range(per_family):          # cropped to the ink: the digit touches the image's border
        i = int(order[k + per_family * len(MNIST_FAMILIES)])
        a = mnist_images[i]
        rows, cols = np.nonzero(a.any(1))[0], np.nonzero(a.any(0))[0]
        tight = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        s = rng.uniform(3, 10)
        size = (max(1, round(tight.shape[1] * s)), round(tight.shape[0] * s))
        big = Image.fromarray(tight).resize(size, Image.BICUBIC)
        add("MNIST test digits: cropped tight", k, compose(np.asarray(big, dtype=np.float64) / 255, rng, noise=0.02),
            None, int(mnist_labels[i]))
    pairs = [(int(order[-1 - k]), int(order[-1 - per_family - k])) for k in range(per_family)]
    make_nondigits(add, rng, font_paths, mnist_images, pairs, per_family)
    return sets


def make_nondigits(add, rng, font_paths, mnist_images, pairs, per_family: int):
    """The non-digit families: ``add(set name, k, image, jpeg quality, None)`` for each image.
    ``pairs``: per_family (i, j) indices of ``mnist_images`` drawn side by side ("two MNIST digits")."""
    for k in range(per_family):
        kind = k % 3
        if kind == 0:
            noise = rng.uniform(0, 1, (CANVAS, CANVAS))
        elif kind == 1:
            noise = np.clip(0.8 + rng.normal(0, 0.15, (CANVAS, CANVAS)), 0, 1)
        else:
            noise = np.asarray(Image.fromarray(np.round(rng.uniform(0, 255, (24, 24))).astype(np.uint8))
                               .resize((CANVAS, CANVAS), Image.BICUBIC), dtype=np.float64) / 255
        add("non-digits: noise", k, Image.fromarray(np.round(noise * 255).astype(np.uint8)), None, None)
        letter, font = LETTERS[k % len(LETTERS)], font_paths[k % len(font_paths)]
        add("non-digits: letters", k, compose(text_ink(letter, font, height_frac=rng.uniform(0.5, 0.7)), rng,
                                              light=rng.uniform(0, 0.3), noise=0.02), None, None)
        a, b = rng.integers(10, size=2)
        two = text_ink(f"{a}{b}", font_paths[(k + 3) % len(font_paths)], height_frac=rng.uniform(0.3, 0.45))
        add("non-digits: two digits", k, compose(two, rng, light=rng.uniform(0, 0.3), noise=0.02), None, None)
        pa, pb = pairs[k]
        pair = np.concatenate([mnist_images[pa], mnist_images[pb]], axis=1)
        pair_ink = np.asarray(Image.fromarray(pair).resize((CANVAS, CANVAS // 2), Image.BICUBIC), float) / 255
        pair_ink = np.pad(pair_ink, ((CANVAS // 4, CANVAS // 4), (0, 0)))
        add("non-digits: two MNIST digits", k, compose(pair_ink, rng, noise=0.02), None, None)
        blank = np.zeros((CANVAS, CANVAS))
        paper, _ = PAPERS[k % len(PAPERS)]
        add("non-digits: blank paper", k, compose(blank, rng, paper=paper, light=rng.uniform(0, 0.6),
                                                  noise=rng.uniform(0.01, 0.06), shadow=k % 2 == 1), None, None)
        scribble = Image.new("L", (CANVAS, CANVAS), 0)
        d = ImageDraw.Draw(scribble)
        pts = [tuple(rng.uniform(40, 200, 2)) for _ in range(int(rng.integers(6, 14)))]
        d.line(pts, fill=255, width=int(rng.integers(4, 12)), joint="curve")
        add("non-digits: scribbles", k, compose(np.asarray(scribble, float) / 255, rng, noise=0.02), None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="shipped weights name (default: the default weights)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--per-family", type=int, default=100, help="images per family (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="MNIST directory")
    ap.add_argument("--reject", type=float, default=None, help="rejection threshold (default: the weights' own)")
    ap.add_argument("--out", default=None, help="JSON results path")
    ap.add_argument("--keep", default=None, help="keep the generated images in this directory")
    args = ap.parse_args()

    from lenet5_fast.data import load_mnist

    if args.checkpoint:
        model, name = model_from_checkpoint(args.checkpoint), args.checkpoint
    elif args.weights:
        model, name = weights.load(args.weights), args.weights
    else:
        model = C.Ensemble.from_pretrained()
        name = f"ensemble ({', '.join(model.names)})"
    reject = args.reject if args.reject is not None else C.default_reject(model)
    font_paths, missing = fonts(FONT_FILES)
    thin_paths, missing_thin = fonts(THIN_FONTS)
    if not font_paths or not thin_paths:
        sys.exit("no fonts found under /usr/share/fonts (apt-get install fonts-dejavu-core)")
    mnist_images, mnist_labels = load_mnist(args.data, "test")
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()[0]
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(args.keep) if args.keep else Path(tmpd)
        tmp.mkdir(parents=True, exist_ok=True)
        sets = make_sets(tmp, rng, font_paths, thin_paths, mnist_images, mnist_labels, args.per_family)
        for set_name, items in sets.items():
            right = accepted = right_accepted = failed = 0
            for path, label in items:
                try:
                    digit = read_digit(path)
                except ValueError:
                    failed += 1           # "no digit found" counts as a rejection, and as wrong
                    continue
                p = C.classify(model, C.model_outputs(model, digit.input))
                ok = label is not None and int(p.label[0]) == label
                acc = float(p.confidence[0]) >= reject and not digit.ink.several
                right += ok
                accepted += acc
                right_accepted += ok and acc
            n = len(items)
            rows.append(dict(set=set_name, images=n, accuracy=100.0 * right / n, no_digit=100.0 * failed / n,
                             accepted=100.0 * accepted / n,
                             accuracy_accepted=100.0 * right_accepted / max(1, accepted)))
    seconds = time.time() - t0
    load_after = os.getloadavg()[0]
    from lenet5_fast.data import load_tensors

    xt, yt = load_tensors(args.data, "test")
    pt = C.classify(model, C.model_outputs(model, xt))
    keep = pt.confidence >= reject
    mnist = dict(samples=int(xt.shape[0]), accepted=100.0 * float(keep.double().mean()),
                 error=100.0 * float((pt.label != yt).double().mean()),
                 error_accepted=100.0 * float((pt.label[keep] != yt[keep]).double().mean()),
                 rejection_for_half_percent_error=C.rejection_for_error(pt.confidence.numpy(),
                                                                        (pt.label == yt).numpy())[0])
    print(f"weights {name}, rejection threshold {reject:g}, {args.per_family} images per family, seed {args.seed}, "
          f"{seconds:.0f} s; {cpu_name()}, {os.cpu_count()} cores, load {load_before:.1f} -> {load_after:.1f}\n")
    print("| images | accuracy | rejected | accuracy of the accepted |\n|---|---:|---:|---:|")
    for r in rows:
        if r["set"].startswith("non-digits"):
            print(f"| {r['set']} | - | **{100 - r['accepted']:.0f}%** (no digit found: {r['no_digit']:.0f}%) | - |")
        else:
            print(f"| {r['set']} | **{r['accuracy']:.0f}%** | {100 - r['accepted']:.0f}% | "
                  f"{r['accuracy_accepted']:.0f}% |")
    print(f"\nMNIST test set ({mnist['samples']} digits as tensors): error {mnist['error']:.2f}%, accepted "
          f"{mnist['accepted']:.2f}% (error of the accepted {mnist['error_accepted']:.3f}%); rejected for 0.5% "
          f"error: {mnist['rejection_for_half_percent_error']:.2f}%")
    if missing or missing_thin:
        print("\nfonts not found:", ", ".join(str(p) for p in missing + missing_thin))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            weights=name, reject=reject, per_family=args.per_family, seed=args.seed, seconds=seconds, mnist_test=mnist,
            machine=dict(cpu=cpu_name(), cores=os.cpu_count(), load_1min=[load_before, load_after],
                         torch=torch.__version__),
            fonts=[str(p) for p in font_paths], thin_fonts=[str(p) for p in thin_paths], rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
