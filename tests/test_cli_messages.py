"""What a new user tripped on (issue 24 item 6): the data directory a checkpoint records, where
galleries go, errors that named the wrong thing, predict's JSON Lines, and phone-sized JPEGs."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lenet5_fast
from lenet5_fast import LeNet5, ops
from lenet5_fast import checkpoint as C
from lenet5_fast import train as T
from lenet5_fast.cli import main


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(mnist_dir), "--out", str(out), "--optimizer", "sdlm", "--epochs", "1",
                 "--train-limit", "200", "--test-limit", "100", "--threads", "1", "--hessian-samples", "50"]) == 0
    return out


@pytest.fixture
def no_default_data(monkeypatch, tmp_path):
    """The default data directory holds nothing (as on a new user's machine)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LENET5_FAST_DATA", raising=False)
    import lenet5_fast.data as D
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", tmp_path / "home" / ".cache" / "lenet5_fast" / "mnist")


def test_eval_and_show_read_the_data_directory_the_checkpoint_records(run, tmp_path, capsys, no_default_data):
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--json", "--no-gallery", "--limit", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 50
    assert main(["show", "0", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "m.png")]) == 0
    assert "mnist test image 0" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in _err(capsys)  # --data still wins


def test_eval_of_shipped_weights_never_writes_into_the_package(mnist_dir, tmp_path, monkeypatch, capsys):
    package = Path(lenet5_fast.__file__).parent
    before = sorted(p.name for p in package.rglob("*"))
    monkeypatch.chdir(tmp_path)
    shipped = lenet5_fast.weights.path("paper")
    assert main(["eval", "--checkpoint", str(shipped), "--data", str(mnist_dir), "--limit", "200", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert Path(res["gallery"]).resolve().parent == tmp_path.resolve(), res
    assert sorted(p.name for p in package.rglob("*")) == before


def test_predict_names_a_directory_and_a_device_for_what_they_are(tmp_path, capsys):
    assert main(["predict", "--weights", "paper", str(tmp_path)]) == 2
    err = _err(capsys)
    assert "is a directory" in err and "does not exist" not in err, err
    assert main(["predict", "--weights", "paper", "/dev/zero"]) == 2
    err = _err(capsys)
    assert "not a regular file" in err and "does not exist" not in err, err


def test_fashion_mnist_without_data_does_not_suggest_download(tmp_path, capsys):
    assert main(["train", "--dataset", "fashion-mnist", "--data", str(tmp_path / "fm"), "--out",
                 str(tmp_path / "run")]) == 2
    err = _err(capsys)
    assert "Fashion-MNIST" in err and "dataset-fashion-mnist" in err and "--download" not in err, err


@pytest.mark.parametrize("flag", ["--lr", "--eta-scale", "--mu", "--max-step"])
def test_a_huge_rate_is_refused_by_name(flag, tmp_path, capsys):
    opt = ["--optimizer", "sgd"] if flag == "--lr" else []
    assert main(["train", "--out", str(tmp_path / "r"), *opt, flag, "1e308"]) == 2
    err = _err(capsys)
    assert flag in err and "3.4e38" in err and "overflow" not in err, err
    with pytest.raises(ValueError, match="at most"):
        T.TrainConfig(optimizer="sgd", lr=1e308).validate()


def test_backward_ops_blame_grad_and_weight_when_they_are_wrong():
    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 5, 5)
    y = ops.conv5x5(x, w, torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"conv5x5_backward: grad must have shape \(2, 4, 5, 5\)"):
        ops.conv5x5_backward(torch.randn(2, 4, 6, 5), y, x, w, 1)
    with pytest.raises(ValueError, match=r"conv5x5_backward: weight must have 4 outputs"):
        ops.conv5x5_backward(y, y, x, torch.randn(5, 3, 5, 5), 1)
    xf, wf = torch.randn(3, 7), torch.randn(4, 7)
    yf = ops.full(xf, wf, torch.zeros(4))
    with pytest.raises(ValueError, match=r"full_backward: grad must have shape \(3, 4\)"):
        ops.full_backward(torch.randn(3, 5), yf, xf, wf)
    with pytest.raises(ValueError, match=r"full_backward: weight must have 4 outputs"):
        ops.full_backward(yf, yf, xf, torch.randn(6, 7))
    xs = torch.randn(2, 3, 8, 8)
    ys = ops.maxpool2x2(xs)
    with pytest.raises(ValueError, match=r"maxpool2x2_backward: grad must have shape \(2, 3, 4, 4\)"):
        ops.maxpool2x2_backward(torch.randn(2, 3, 5, 4), xs, ys)
    ysub = ops.subsample2x2(xs, torch.ones(3), torch.zeros(3), 1)
    with pytest.raises(ValueError, match=r"subsample2x2_backward: grad must have shape \(2, 3, 4, 4\)"):
        ops.subsample2x2_backward(torch.randn(2, 3, 4, 3), ysub, xs, torch.ones(3), 1)
    table = lenet5_fast.PAPER_C3_TABLE
    offsets, inputs = ops.connection_table_to_csr(table, 6)
    xc, wc = torch.randn(2, 6, 14, 14), torch.randn(int(inputs.shape[0]), 5, 5)
    yc = ops.sparse_conv5x5(xc, wc, torch.zeros(16), offsets, inputs, 1)
    with pytest.raises(ValueError, match=r"sparse_conv5x5_backward: grad must have shape \(2, 16, 10, 10\)"):
        ops.sparse_conv5x5_backward(torch.randn(2, 16, 9, 10), yc, xc, wc, offsets, inputs, 1)


def test_a_checkpoint_with_a_bad_c3_table_is_blamed_on_the_checkpoint(tmp_path, capsys):
    path = tmp_path / "c3.pt"
    C.save_checkpoint(path, LeNet5())
    ck = torch.load(path, weights_only=True)
    ck["model_config"]["c3_table"][1] = [0.5, 1, 2]  # int(0.5) == 0 made this another network
    ck["sha256"] = C.checksum(ck)
    torch.save(ck, path)
    with pytest.raises(C.CheckpointError, match="C3 connection table"):
        C.model_from_checkpoint(path)
    img = tmp_path / "digit.png"
    img.write_bytes(b"")
    assert main(["predict", "--checkpoint", str(path), str(img)]) == 2
    err = _err(capsys)
    assert str(path) in err and "C3" in err and str(img) not in err, err


def test_out_must_name_something(capsys):
    assert main(["train", "--out", ""]) == 2
    assert "--out" in _err(capsys)
    assert main(["show", "0", "--weights", "paper", "--out", " "]) == 2
    assert "--out" in _err(capsys)


def test_resume_conflict_says_what_the_run_has(run, capsys):
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.1"]) == 2
    err = _err(capsys)
    assert "None" not in err and "the paper's eta schedule" in err, err


def test_reject_is_a_confidence(capsys, tmp_path):
    assert main(["predict", "--reject", "2", str(tmp_path / "x.png")]) == 2
    assert "--reject" in _err(capsys)


def _digit_png(path, size=200):
    from PIL import Image, ImageDraw

    im = Image.new("L", (size, size), 245)
    ImageDraw.Draw(im).line([(size * 0.3, size * 0.2), (size * 0.7, size * 0.2), (size * 0.45, size * 0.85)],
                            fill=20, width=max(3, size // 14))
    im.save(path)
    return path


def test_predict_json_is_json_lines_printed_as_each_image_is_done(tmp_path, capsys, monkeypatch):
    from lenet5_fast import cli

    images = [_digit_png(tmp_path / f"d{i}.png") for i in range(3)] + [tmp_path / "missing.png"]
    seen = []
    real = cli._predict_one

    def spy(model, path, reject, show_dir):
        seen.append(capsys.readouterr().out)  # what was printed before this image
        return real(model, path, reject, show_dir)

    monkeypatch.setattr(cli, "_predict_one", spy)
    assert main(["predict", "--weights", "paper", "--json", *map(str, images)]) == 2
    out = "".join(seen[1:]) + capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4 and [json.loads(line)["image"] for line in lines] == list(map(str, images))
    assert "error" in json.loads(lines[3]) and json.loads(lines[0])["class"] is not None
    assert seen[1].count("\n") == 1 and seen[2].count("\n") == 1  # streamed, not at the end


def test_a_phone_sized_jpeg_is_decoded_at_reduced_scale(tmp_path):
    """A 108-megapixel JPEG (12,000 x 9,000, a phone's) was refused outright; it decodes at 1/8
    scale (1,500 x 1,125). A PNG that size, which cannot be decoded reduced, is still refused."""
    from PIL import Image

    from lenet5_fast.imageio import ImageError, read_digit

    small = Image.open(_digit_png(tmp_path / "d.png", 1500))
    big = small.resize((12000, 9000), Image.NEAREST)
    big.save(tmp_path / "phone.jpg", quality=70)
    del big
    t0 = time.monotonic()
    d = read_digit(tmp_path / "phone.jpg")
    assert time.monotonic() - t0 < 30
    assert d.input.shape == (1, 1, 32, 32) and bool(torch.isfinite(d.input).all())
    assert int(LeNet5.from_pretrained("paper").predict(d.input)[0]) == 7
    png = tmp_path / "huge.png"
    Image.new("L", (12000, 9000), 255).save(png)
    with pytest.raises(ImageError, match="megapixels"):
        read_digit(png)
    assert np.prod(Image.open(png).size) > 50e6
