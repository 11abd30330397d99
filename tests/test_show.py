"""`lenet5-fast show`: every layer's output for one image in one picture (input, C1..S4 maps,
C5 and F6 bars, RBF distances next to the codes or class probabilities)."""
import sys

import numpy as np
import pytest
import torch

from cifar_files import write_batches
from lenet5_fast import LeNet5
from lenet5_fast.checkpoint import save_checkpoint
from lenet5_fast.cli import main
from lenet5_fast.show import layer_outputs, render_feature_maps

PNG = b"\x89PNG\r\n\x1a\n"
SIZE = (1300, 900)


def _png_stats(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as im:
        size = im.size
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    return size, grey


@pytest.mark.parametrize("variant, channels", [("classic", 1), ("modern", 1), ("modern", 3), ("keras", 3)])
def test_layer_outputs(variant, channels):
    model = LeNet5(variant=variant, in_channels=channels)
    x = torch.rand(1, channels, 32, 32)
    outs = layer_outputs(model, x)
    shapes = {k: tuple(v.shape) for k, v in outs.items()}
    assert shapes == {"input": (channels, 32, 32), "c1": (6, 28, 28), "s2": (6, 14, 14), "c3": (16, 10, 10),
                      "s4": (16, 5, 5), "c5": (120, 1, 1), "f6": (84,), "output": (10,)}
    assert torch.allclose(outs["output"], model(x)[0])
    with pytest.raises(ValueError, match="expected one"):
        layer_outputs(model, torch.rand(2, channels, 32, 32))


@pytest.mark.parametrize("variant, channels", [("classic", 1), ("modern", 3)])
def test_render_is_a_full_picture(tmp_path, variant, channels):
    model = LeNet5(variant=variant, in_channels=channels)
    paths = []
    for seed in (0, 1):
        x = torch.rand(1, channels, 32, 32, generator=torch.Generator().manual_seed(seed))
        paths.append(tmp_path / f"maps{seed}.png")
        pred = render_feature_maps(model, x, paths[-1], title="t", label=3)
        assert pred == int(model.scores(model(x)).argmax())
    (size, a), (_, b) = _png_stats(paths[0]), _png_stats(paths[1])
    assert size == SIZE
    assert a.std() > 30 and len(np.unique(a)) > 50       # not blank: maps, bars, text
    assert (a < 128).mean() > 0.05                       # a good part of it is drawn dark
    assert np.abs(a - b).mean() > 1.0                    # it depends on the image shown
    assert list(tmp_path.glob(".*tmp")) == []            # written atomically


def _digit_png(path):
    from PIL import Image, ImageDraw

    im = Image.new("L", (120, 160), 255)
    d = ImageDraw.Draw(im)
    d.line([(25, 25), (95, 25), (50, 140)], fill=0, width=12)  # a 7
    im.save(path)


def test_show_cli_with_an_image_file(tmp_path, capsys):
    ck, png, out = tmp_path / "ck.pt", tmp_path / "seven.png", tmp_path / "maps.png"
    save_checkpoint(ck, LeNet5())
    _digit_png(png)
    assert main(["show", str(png), "--checkpoint", str(ck), "--out", str(out)]) == 0
    assert f"{png}: predicted" in capsys.readouterr().out
    size, grey = _png_stats(out)
    assert size == SIZE and grey.std() > 30


def test_show_cli_with_a_cifar10_test_index(tmp_path, capsys):
    d = tmp_path / "cifar"
    _, (_, test_y) = write_batches(d)
    ck, out = tmp_path / "ck.pt", tmp_path / "maps.png"
    save_checkpoint(ck, LeNet5(variant="modern", in_channels=3), config={"dataset": "cifar10"})
    assert main(["show", "3", "--checkpoint", str(ck), "--data", str(d), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("cifar10 test image 3: predicted ")
    assert _png_stats(out)[0] == SIZE
    assert main(["show", "7", "--checkpoint", str(ck), "--data", str(d), "--out", str(out)]) == 2
    assert "index 7 is past the end of the cifar10 test set (7 images)" in capsys.readouterr().err
    assert main(["show", "0", "--checkpoint", str(ck), "--dataset", "mnist", "--out", str(out)]) == 2
    assert "the model takes 3-channel images; mnist has 1" in capsys.readouterr().err


def test_show_cli_errors(tmp_path, capsys, monkeypatch):
    ck, out = tmp_path / "ck.pt", tmp_path / "maps.png"
    save_checkpoint(ck, LeNet5())
    assert main(["show", "0", "--out", str(out)]) == 2
    assert "exactly one of --checkpoint PATH and --weights NAME" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing.png"), "--checkpoint", str(ck), "--out", str(out)]) == 2
    assert "neither a test-set index nor an image file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lenet5_fast.weights", None)  # an install without shipped weights
    assert main(["show", "0", "--weights", "paper", "--out", str(out)]) == 2
    assert "--weights needs the shipped pretrained weights" in capsys.readouterr().err
    assert not out.exists()
