"""Reading your own digits: `lenet5-fast predict` with the shipped weights on photo-like images
(uneven lighting, noise, coloured paper, shaded paper edges, ink on transparency, small and
off-centre digits, EXIF rotation), confidence and rejection (non-digits, the paper's rejection
figure in `eval`), and batch robustness (corrupt, truncated, NaN, decompression bombs, missing
files). The images are drawn with PIL shapes: no fonts needed."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lenet5_fast import confidence as C
from lenet5_fast import imageio, weights
from lenet5_fast.cli import main
from lenet5_fast.data import PAPER_BACKGROUND, PAPER_INK
from lenet5_fast.imageio import NoDigit, find_ink, normalize_digit, prepare_digit, read_digit

DIGITS = (0, 1, 4, 7)


def ink(kind, size=200):
    """A digit (0, 1, 4, 7), or two 1s side by side ("11"), drawn with strokes: float [size, size],
    1 = ink."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    s, w = size / 200, max(2, int(16 * size / 200))
    if kind == 0:
        d.ellipse([60 * s, 40 * s, 140 * s, 160 * s], outline=255, width=w)
    elif kind == 1:
        d.line([(105 * s, 40 * s), (95 * s, 160 * s)], fill=255, width=w)
    elif kind == 4:
        d.line([(120 * s, 160 * s), (120 * s, 40 * s), (60 * s, 120 * s), (145 * s, 120 * s)], fill=255, width=w,
               joint="curve")
    elif kind == 7:
        d.line([(60 * s, 45 * s), (140 * s, 45 * s), (90 * s, 160 * s)], fill=255, width=w, joint="curve")
    elif kind == "11":
        for x in (50, 130):
            d.line([(x * s, 50 * s), (x * s, 150 * s)], fill=255, width=w)
    return np.asarray(im, dtype=np.float64) / 255


def photo(ink_map, paper=(0.95, 0.95, 0.95), ink_rgb=(0.05, 0.05, 0.05), light=0.0, noise=0.0, edge=False, seed=0):
    """RGB float [H, W, 3]: coloured paper and ink, a lighting gradient, a dark table along the
    left edge with the sheet's shadow next to it, Gaussian noise."""
    rng = np.random.default_rng(seed)
    img = np.asarray(paper) * (1 - ink_map[..., None]) + np.asarray(ink_rgb) * ink_map[..., None]
    h, w = ink_map.shape
    xx = np.arange(w)[None, :] / w
    img = img * (1 - light * (1 - xx))[..., None]            # darker to the left
    if edge:
        shade = np.clip((xx - 0.1) / 0.12, 0, 1)
        img = img * (0.5 + 0.5 * shade)[..., None]
        img[:, :int(0.1 * w)] = (0.2, 0.15, 0.1)
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 1)


def save_rgb(a, path, quality=None):
    im = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
    im.save(path, **({"quality": quality} if quality else {}))
    return str(path)


@pytest.fixture(scope="module")
def model():
    return weights.load(weights.DEFAULT)


def predicted(model, image):
    p = C.classify(model, C.model_outputs(model, prepare_digit(image).input))
    return int(p.label[0]), float(p.confidence[0])


# ---------------------------------------------------------------------------------------------
# finding the digit in photos

@pytest.mark.parametrize("digit", DIGITS)
def test_clean_drawn_digits_are_read(model, digit):
    cls, conf = predicted(model, 1.0 - 0.9 * ink(digit))
    assert cls == digit and conf >= C.default_reject(model)


@pytest.mark.parametrize("digit", DIGITS)
def test_uneven_lighting_and_noise(model, digit):
    img = photo(ink(digit), light=0.7, noise=0.06, seed=digit)
    assert predicted(model, img)[0] == digit


@pytest.mark.parametrize("digit", DIGITS)
def test_blue_ink_on_beige_paper_with_a_shaded_edge(model, digit, tmp_path):
    """The shaded paper edge and the table beyond it are not ink: the digit keeps its size."""
    img = photo(np.pad(ink(digit), ((20, 20), (60, 20))), paper=(0.93, 0.87, 0.72), ink_rgb=(0.1, 0.15, 0.55),
                light=0.3, noise=0.03, edge=True, seed=digit)
    path = save_rgb(img, tmp_path / "beige.jpg", quality=80)
    found = find_ink(imageio.read_image(path))
    h, w = found.shape
    assert found.box[1] > 0.2 * w                              # nowhere near the table on the left
    assert found.box[2] - found.box[0] > 0.4 * h               # the digit's height, not a squashed box
    cls, _ = predicted(model, imageio.read_image(path))
    assert cls == digit


@pytest.mark.parametrize("light_ink", [True, False])
def test_ink_on_a_transparent_png(model, tmp_path, light_ink):
    rgba = np.zeros((200, 200, 4), dtype=np.uint8)
    rgba[..., :3] = 255 if light_ink else 0
    rgba[..., 3] = np.round(ink(7) * 255).astype(np.uint8)
    path = tmp_path / "seven.png"
    Image.fromarray(rgba, "RGBA").save(path)
    x = read_digit(path).input
    p = C.classify(model, C.model_outputs(model, x))
    assert int(p.label[0]) == 7 and float(p.confidence[0]) >= C.default_reject(model)


def test_small_off_centre_digit_with_specks_and_a_border_line(model):
    big = np.zeros((480, 640))
    big[300:360, 420:480] = ink(4, 60)
    rng = np.random.default_rng(0)
    for y, x in rng.integers(10, 470, (12, 2)):
        big[y:y + 2, x:x + 2] = 1.0                             # dust
    big[:, 3:6] = 1.0                                           # a line along the left border
    assert predicted(model, photo(big, noise=0.02))[0] == 4


def test_digits_cropped_to_their_ink(model, mnist_dir):
    """No paper around the digit: MNIST test digits cut to their ink (20 pixels tall, touching
    the image's border on every side), dark on white."""
    from lenet5_fast.data import load_mnist

    images, labels = load_mnist(mnist_dir, "test")
    right = 0
    for k in range(40):
        a = images[k]
        rows, cols = np.nonzero(a.any(1))[0], np.nonzero(a.any(0))[0]
        tight = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        try:
            right += predicted(model, 1.0 - tight / 255.0)[0] == int(labels[k])
        except NoDigit:                 # a "1" 6 pixels wide, more ink than paper: counts as wrong
            pass
    assert right >= 36, right


def test_exif_orientation_is_applied(model, tmp_path):
    """A phone stores the picture sideways and says so in EXIF: the digit is read upright."""
    upright = 1.0 - 0.9 * ink(7)
    stored = np.rot90(upright, k=1)                             # as the sensor saw it
    im = Image.fromarray(np.round(stored * 255).astype(np.uint8)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6                                            # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    im.save(path, quality=90, exif=exif.tobytes())
    x = read_digit(path).input
    assert int(C.classify(model, C.model_outputs(model, x)).label[0]) == 7


def test_mnist_test_digits_photographed(model, mnist_dir):
    """Real handwriting: 20 MNIST test digits drawn big on beige paper with a shaded edge, a
    lighting gradient and noise."""
    from lenet5_fast.data import load_mnist

    images, labels = load_mnist(mnist_dir, "test")
    right = 0
    for k in range(20):
        big = np.asarray(Image.fromarray(images[k]).resize((168, 168), Image.BICUBIC), dtype=np.float64) / 255
        img = photo(np.pad(big, ((40, 40), (90, 40))), paper=(0.93, 0.87, 0.72), ink_rgb=(0.1, 0.15, 0.55),
                    light=0.4, noise=0.04, edge=True, seed=k)
        right += predicted(model, img)[0] == int(labels[k])
    assert right >= 19, right


def test_normalize_digit_recovers_an_mnist_digit_after_the_changes(mnist_dir):
    from lenet5_fast.data import load_mnist

    images, _ = load_mnist(mnist_dir, "test")
    for k in range(5):
        big = np.kron(images[k].astype(np.float64) / 255, np.ones((5, 5)))
        out = normalize_digit(photo(np.pad(big, 30), light=0.5, noise=0.03, seed=k)).astype(np.float64)
        corr = np.corrcoef(out.ravel(), images[k].astype(np.float64).ravel())[0, 1]
        assert corr > 0.85, (k, corr)


# ---------------------------------------------------------------------------------------------
# bad pixels

def test_nan_and_inf_images_are_refused(tmp_path, capsys):
    a = np.full((40, 40), 0.9)
    a[10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalize_digit(a)
    with pytest.raises(ValueError, match="NaN"):
        normalize_digit(np.where(np.isnan(a), np.inf, a))
    path = tmp_path / "nan.tif"
    Image.fromarray(a.astype(np.float32), mode="F").save(path)
    assert main(["predict", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "NaN" in err


def test_no_digit_in_blank_paper_or_noise():
    blank = photo(np.zeros((200, 200)), paper=(0.93, 0.87, 0.72), light=0.6, noise=0.04, edge=True)
    with pytest.raises(NoDigit):
        find_ink(blank)
    with pytest.raises(NoDigit):
        find_ink(np.random.default_rng(0).uniform(0, 1, (120, 160)))


# ---------------------------------------------------------------------------------------------
# confidence and rejection

def test_posterior_is_the_map_criterion_with_its_rubbish_class():
    classic = weights.load("paper")
    d = torch.tensor([[0.5, 3.0, 9.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0]])
    p = C.classify(classic, d)
    denom = float(np.exp(-classic.map_j) + torch.exp(-d.double()).sum())
    assert float(p.confidence[0]) == pytest.approx(float(np.exp(-0.5) / denom), rel=1e-12)
    assert int(p.label[0]) == 0 and float(p.margin[0]) == pytest.approx(2.5)
    assert float(p.posterior.sum()) < 1.0                       # the rest is "none of the digits"
    far = C.classify(classic, d + 30.0)                         # far from every code: low confidence
    assert float(far.confidence[0]) < 1e-10 and float(far.margin[0]) == pytest.approx(2.5)
    modern = weights.load("modern-adam")
    logits = torch.tensor([[1.0, 4.0, 0.0, 0, 0, 0, 0, 0, 0, 0]])
    pm = C.classify(modern, logits)
    assert int(pm.label[0]) == 1 and float(pm.margin[0]) == pytest.approx(3.0)
    assert float(pm.confidence[0]) == pytest.approx(float(torch.softmax(logits.double(), 1)[0, 1]))


def test_rejection_curve_and_the_papers_figure():
    conf = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.95, 0.6, 0.5, 0.4, 0.3])
    ok = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 1], dtype=bool)   # the two least confident but one are wrong
    rejected, error = C.rejection_curve(conf, ok)
    assert rejected[0] == 0 and error[0] == pytest.approx(20.0)
    assert error[1] == pytest.approx(100 / 9) and error[2] == 0.0
    r, threshold = C.rejection_for_error(conf, ok, 0.5)
    assert r == pytest.approx(20.0) and threshold == pytest.approx(0.3)
    assert C.rejection_for_error(conf, np.ones(10, bool), 0.5) == (0.0, pytest.approx(0.1))


def test_most_real_test_digits_are_accepted_at_the_default_threshold(model, mnist_dir):
    from lenet5_fast.data import load_tensors

    x, y = load_tensors(mnist_dir, "test")
    p = C.classify(model, C.model_outputs(model, x))
    accepted = p.confidence >= C.default_reject(model)
    assert float(accepted.float().mean()) >= 0.97
    err_all = float((p.label != y).float().mean())
    err_accepted = float((p.label[accepted] != y[accepted]).float().mean())
    assert err_accepted < err_all / 3


def test_predict_rejects_non_digits(tmp_path, capsys):
    paths = [save_rgb(np.random.default_rng(1).uniform(0, 1, (200, 200, 3)), tmp_path / "noise.png"),
             save_rgb(photo(np.zeros((200, 200)), light=0.5, noise=0.03), tmp_path / "blank.png"),
             save_rgb(photo(ink("11"), noise=0.02), tmp_path / "eleven.png")]
    assert main(["predict", "--json", *paths]) == 0             # rejections are answers, not failures
    res = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["rejected"] for r in res] == [True, True, True], res
    assert "several" in res[2]["reason"]
    assert main(["predict", paths[2]]) == 0
    assert "reject" in capsys.readouterr().out
    assert main(["predict", "--reject", "0", "--json", paths[2]]) == 0   # never reject
    assert [json.loads(r) for r in capsys.readouterr().out.splitlines()][0]["rejected"] is False


def test_eval_reports_the_rejection_for_half_a_percent_error(mnist_dir, tmp_path, capsys):
    ck = weights.path("paper")
    assert main(["eval", "--checkpoint", str(ck), "--data", str(mnist_dir), "--limit", "2000", "--json",
                 "--gallery", str(tmp_path / "wrong.png")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0.0 < res["rejection_for_0.5pct_error"] < 10.0 and res["rejection_threshold"] > 0
    assert res["rejection_plot"] == str(tmp_path / "rejection.png")
    assert (tmp_path / "rejection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# the command line: no checkpoint needed, batches, --show

def test_predict_needs_no_checkpoint(tmp_path, capsys):
    path = save_rgb(photo(ink(7), light=0.5, noise=0.03), tmp_path / "seven.png")
    assert main(["predict", path]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{path}: 7 ") and "confidence" in line and "margin" in line
    assert main(["predict", "--weights", "modern-adam", "--json", path]) == 0
    r = [json.loads(r) for r in capsys.readouterr().out.splitlines()][0]
    assert r["class"] == 7 and len(r["logits"]) == 10 and 0 < r["confidence"] <= 1 and r["margin"] > 0
    assert main(["predict", "--weights", "paper", "--checkpoint", "x.pt", path]) == 2  # one or the other


def test_show_writes_what_the_network_saw(tmp_path, capsys):
    path = save_rgb(photo(ink(0), noise=0.02), tmp_path / "zero.png")
    assert main(["predict", "--show", path]) == 0
    png = tmp_path / "zero.png.lenet5.png"
    seen = np.asarray(Image.open(png), dtype=np.float64)
    assert seen.shape == (32, 32) and str(png) in capsys.readouterr().out
    x = read_digit(path).input[0, 0].numpy()
    expected = np.round(np.clip((x - PAPER_BACKGROUND) / (PAPER_INK - PAPER_BACKGROUND), 0, 1) * 255)
    assert np.array_equal(seen, expected)
    out_dir = tmp_path / "seen"
    assert main(["predict", "--debug-dir", str(out_dir), path]) == 0
    assert (out_dir / "zero.png.lenet5.png").exists()


def _png_header_only(path, w, h):
    """A PNG that claims w x h pixels (a decompression bomb needs no more to be refused)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * (w + 1) * 4)) + chunk(b"IEND", b""))
    return str(path)


def test_a_batch_goes_on_past_bad_files(tmp_path, capsys):
    good = save_rgb(photo(ink(1), noise=0.02), tmp_path / "one.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    jpeg = save_rgb(photo(ink(4), noise=0.02), tmp_path / "four.jpg", quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(jpeg, "rb").read()[:600])
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    large = _png_header_only(tmp_path / "large.png", 9000, 6000)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((30, 30), np.nan, dtype=np.float32), mode="F").save(nan)
    missing = str(tmp_path / "missing.png")
    files = [good, str(corrupt), str(truncated), bomb, large, str(nan), missing, jpeg]
    assert main(["predict", *files]) == 2
    out = capsys.readouterr()
    assert out.out.splitlines()[0].startswith(f"{good}: 1 ") and out.out.splitlines()[1].startswith(f"{jpeg}: 4 ")
    errors = [line for line in out.err.splitlines() if line.startswith("lenet5-fast: error:")]
    assert len(errors) == 6 and "6 of 8 images failed" in out.err
    for f, line in zip(files[1:7], errors):
        assert f in line, (f, line)
    assert "decompression bomb" in errors[2] and "megapixels" in errors[3] and "NaN" in errors[4]
    assert main(["predict", "--json", *files]) == 2
    res = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in res] == files
    assert [("error" in r) for r in res] == [False, True, True, True, True, True, True, False]
    assert res[0]["class"] == 1 and res[-1]["class"] == 4


def test_predict_without_scipy_says_so(tmp_path, capsys, monkeypatch):
    from lenet5_fast.train import MissingExtra

    def missing():
        raise MissingExtra("scipy is not installed; install it with `pip install 'lenet5_fast[predict]'`")

    monkeypatch.setattr(imageio, "_ndimage", missing)
    assert main(["predict", str(tmp_path / "x.png")]) == 2
    assert "scipy is not installed" in capsys.readouterr().err


def test_garbage_behind_image_headers_is_a_clear_error(tmp_path):
    """Whatever a decoder raises on a corrupt file comes out as ImageError naming it."""
    headers = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF"]
    rng = np.random.default_rng(0)
    for k in range(60):
        path = tmp_path / f"garbage{k}.img"
        junk = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        path.write_bytes(headers[k % len(headers)] + junk)
        try:
            imageio.read_image(path)
        except imageio.ImageError as e:
            assert str(path) in str(e)
