"""The ensemble of the shipped networks (`confidence.Ensemble`, `lenet5-fast predict`'s default):
its posterior is the mixture of its members', it rejects letters that one network alone takes
for digits while it keeps digits, and its default threshold keeps >= 97% of the MNIST test
digits (and is the round value keeping 98% of the training digits, the rule it was chosen by)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from lenet5_fast import confidence as C
from lenet5_fast import weights
from lenet5_fast.cli import main
from lenet5_fast.imageio import prepare_digit

FONTS = Path("/usr/share/fonts/truetype/dejavu")


@pytest.fixture(scope="module")
def ensemble():
    return C.Ensemble.from_pretrained()


def glyph(text, font="DejaVuSans.ttf", size=200):
    """``text`` in a DejaVu font, dark on light paper: float [size, size] in [0, 1]."""
    path = FONTS / font
    if not path.exists():
        pytest.skip(f"{path} not installed (apt-get install fonts-dejavu-core)")
    im = Image.new("L", (size, size), 0)
    ImageDraw.Draw(im).text((size // 2, size // 2), text, fill=255, font=ImageFont.truetype(str(path), 120),
                            anchor="mm")
    return 1.0 - 0.9 * np.asarray(im, dtype=np.float64) / 255


def decide(model, image):
    p = C.classify(model, C.model_outputs(model, prepare_digit(image).input))
    return int(p.label[0]), float(p.confidence[0])


def test_the_ensemble_is_the_three_shipped_networks(ensemble):
    assert set(C.ENSEMBLE) <= set(weights.list()) and ensemble.names == list(C.ENSEMBLE)
    assert ensemble.variant == "ensemble" and C.default_reject(ensemble) == 0.38
    assert [m.variant for m in ensemble.models] == ["classic", "classic", "modern"]
    with pytest.raises(ValueError):
        C.Ensemble(ensemble.models[:1])


def test_posterior_is_the_mixture_of_the_members(ensemble):
    x = torch.randn(5, 1, 32, 32)
    out = C.model_outputs(ensemble, x)
    assert out.shape == (3, 5, 10)
    members = [C.posterior(m, C.model_outputs(m, x)) for m in ensemble.models]
    mix = C.posterior(ensemble, out)
    assert torch.allclose(mix, sum(members) / 3, rtol=0, atol=1e-12)
    p = C.classify(ensemble, out)
    assert torch.equal(p.label, mix.argmax(1)) and torch.allclose(p.confidence, mix.max(1).values)
    top2 = mix.topk(2, 1).values
    assert torch.allclose(p.margin, top2[:, 0] - top2[:, 1]) and bool((p.margin >= 0).all())
    assert bool((mix.sum(1) <= 1 + 1e-12).all())                  # the classics' rubbish class stays out
    with pytest.raises(ValueError):
        C.posterior(ensemble, out[0])                             # one network's outputs are not the ensemble's
    # agreement: every member's class the same
    crafted = torch.stack([torch.tensor([[0.0] + [50.0] * 9]), torch.tensor([[50.0, 0.0] + [50.0] * 8]),
                           torch.tensor([[9.0] + [0.0] * 9])])
    assert C.agreement(ensemble, crafted).tolist() == [False]
    assert C.agreement(ensemble, crafted[[0, 0, 2]]).tolist() == [True]


@pytest.mark.parametrize("letter,font", [("A", "DejaVuSans.ttf"), ("F", "DejaVuSans.ttf"), ("M", "DejaVuSans.ttf"),
                                         ("R", "DejaVuSans.ttf"), ("T", "DejaVuSans.ttf"),
                                         ("A", "DejaVuSerif.ttf"), ("L", "DejaVuSerif.ttf")])
def test_letters_one_network_takes_for_digits_are_rejected(ensemble, letter, font):
    image = glyph(letter, font)
    single = weights.load(weights.DEFAULT)
    assert decide(single, image)[1] >= C.default_reject(single)   # paper-distort alone accepts it
    assert decide(ensemble, image)[1] < C.default_reject(ensemble)


def test_font_digits_are_read_and_kept(ensemble):
    single = weights.load(weights.DEFAULT)
    kept = {"ensemble": 0, "single": 0}
    for font in ("DejaVuSans.ttf", "DejaVuSerif.ttf"):
        for d in range(10):
            image = glyph(str(d), font)
            cls, conf = decide(ensemble, image)
            assert cls == d, (font, d)
            kept["ensemble"] += conf >= C.default_reject(ensemble)
            cls, conf = decide(single, image)
            kept["single"] += cls == d and conf >= C.default_reject(single)
    assert kept["ensemble"] >= 19 and kept["ensemble"] > kept["single"], kept


def test_mnist_digits_kept_at_the_default_threshold(ensemble, mnist_dir):
    from lenet5_fast.data import load_tensors

    t = C.default_reject(ensemble)
    x, y = load_tensors(mnist_dir, "test")
    p = C.classify(ensemble, C.model_outputs(ensemble, x))
    accepted = p.confidence >= t
    assert float(accepted.double().mean()) >= 0.97
    err_all = float((p.label != y).double().mean())
    assert float((p.label[accepted] != y[accepted]).double().mean()) < err_all / 5
    # how it was chosen: the round value (two decimals) keeping 98% of the training digits
    x, y = load_tensors(mnist_dir, "train")
    conf = C.classify(ensemble, C.model_outputs(ensemble, x)).confidence
    assert float((conf >= t).double().mean()) >= 0.98 > float((conf >= t + 0.01).double().mean())


def test_predict_uses_the_ensemble_by_default(tmp_path, capsys):
    paths = []
    for name, text in (("seven", "7"), ("tee", "T")):
        a = glyph(text)
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(np.round(a * 255).astype(np.uint8)).save(paths[-1])
    assert main(["predict", "--json", *paths]) == 0
    seven, tee = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert seven["class"] == 7 and not seven["rejected"] and seven["confidence"] >= 0.38
    assert list(seven["networks"]) == list(C.ENSEMBLE) and len(seven["posterior"]) == 10
    assert all(v["class"] == 7 for v in seven["networks"].values())
    assert tee["rejected"] and "below 0.38" in tee["reason"]
    assert main(["predict", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{paths[0]}: 7 ") and "networks paper:7" in lines[0]
    assert lines[1].startswith(f"{paths[1]}: reject (confidence")
    # one network, by name: its own outputs and threshold
    assert main(["predict", "--weights", "paper-distort", "--json", paths[1]]) == 0
    r = [json.loads(r) for r in capsys.readouterr().out.splitlines()][0]
    assert len(r["distances"]) == 10 and "networks" not in r and r["class"] == 7 and not r["rejected"]
    assert main(["predict", "--reject", "0", "--json", paths[1]]) == 0       # never reject
    assert [json.loads(r) for r in capsys.readouterr().out.splitlines()][0]["rejected"] is False
