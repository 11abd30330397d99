"""`lenet5-fast train / eval / predict` end to end on real MNIST: a short run on 2,000 samples
learns, eval reports it and draws the gallery, predict reads generated photos of digits."""
import json

import numpy as np
import pytest

from lenet5_fast import train as T
from lenet5_fast.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_dir):
    """One short run of the default recipe (SDLM, per-sample updates, the paper's eta and mu,
    every step bounded by 0.0005):
    3 passes over 2,000 training samples."""
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--data", str(mnist_dir), "--out", str(out), "--epochs", "3", "--optimizer", "sdlm",
               "--train-limit", "2000", "--test-limit", "1000", "--threads", "1"])
    assert rc == 0
    return out


def test_short_training_run_learns(run):
    m = json.loads((run / "metrics.json").read_text())
    assert m["complete"] and m["passes"] == 3 and m["config"]["optimizer"] == "sdlm"
    assert m["config"]["batch_size"] == 1 and m["config"]["mu"] == 0.02 and m["config"]["max_step"] == 5e-4
    assert [h["mu"] for h in m["history"]] == pytest.approx([1.0, 1.0, 0.4])  # max(0.02, eta / max_step)
    assert m["test_error"] < 25.0  # chance is 90%
    assert m["history"][-1]["train_error"] < 20.0
    assert m["history"][-1]["test_error"] < m["history"][0]["test_error"]
    assert (run / "errors.png").read_bytes()[:8] == PNG
    assert (run / "checkpoint.pt").exists() and (run / "checkpoint-pass01.pt").exists()


def test_train_again_needs_resume(run, mnist_dir, capsys):
    assert main(["train", "--data", str(mnist_dir), "--out", str(run), "--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_json_and_gallery(run, mnist_dir, capsys, tmp_path):
    gallery = tmp_path / "wrong.png"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(mnist_dir), "--json",
                 "--limit", "1000", "--gallery", str(gallery), "--gallery-max", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    train_metrics = json.loads((run / "metrics.json").read_text())
    assert res["samples"] == 1000 and res["test_error"] == pytest.approx(train_metrics["test_error"])
    assert res["errors"] == round(res["test_error"] * 10) and res["gallery"] == str(gallery)
    assert gallery.read_bytes()[:8] == PNG


def test_eval_without_matplotlib_says_so(run, mnist_dir, capsys, monkeypatch):
    def missing():
        raise T.MissingExtra("matplotlib is not installed; install it with `pip install 'lenet5_fast[plot]'`")

    monkeypatch.setattr(T, "_pyplot", missing)
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(mnist_dir),
                 "--limit", "200"]) == 0
    out = capsys.readouterr()
    assert "test error" in out.out and "matplotlib is not installed" in out.err


def test_eval_bad_checkpoint_is_a_clear_error(tmp_path, mnist_dir, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["eval", "--checkpoint", str(bad), "--data", str(mnist_dir)]) == 2
    assert "not a readable lenet5_fast checkpoint" in capsys.readouterr().err


def _photo(digit: np.ndarray, path, dark_ink=True, size=(180, 240)):
    """A generated 'photo' of an MNIST digit: 6x larger, off-centre, on paper, as PNG or JPEG."""
    from PIL import Image

    big = np.kron(digit.astype(np.float64) / 255, np.ones((6, 6)))
    paper = np.full(size, 0.9)
    paper[10:10 + big.shape[0], 60:60 + big.shape[1]] -= 0.8 * big
    img = paper if dark_ink else 1.0 - paper
    Image.fromarray(np.round(img * 255).astype(np.uint8)).convert("RGB").save(path)


def test_predict_generated_images(run, mnist_dir, tmp_path, capsys):
    from lenet5_fast.checkpoint import model_from_checkpoint
    from lenet5_fast.data import load_mnist, preprocess

    images, labels = load_mnist(mnist_dir, "test")
    model = model_from_checkpoint(run / "checkpoint.pt")
    paths, expected = [], []
    for k in range(6):
        p = tmp_path / f"digit{k}.{'png' if k % 2 else 'jpg'}"
        _photo(images[k], p, dark_ink=k < 3)
        paths.append(str(p))
        expected.append(int(model.predict(preprocess(images[k:k + 1]))[0]))
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--json", *paths]) == 0
    res = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in res] == paths
    for r in res:
        assert len(r["distances"]) == 10 and all(d >= 0 for d in r["distances"])
        assert r["class"] == int(np.argmin(r["distances"]))
    agree = sum(r["class"] == e for r, e in zip(res, expected))
    assert agree >= 5, (expected, [r["class"] for r in res])
    right = sum(r["class"] == int(labels[k]) for k, r in enumerate(res))
    assert right >= 4, ([int(v) for v in labels[:6]], [r["class"] for r in res])
    # the plain-text form
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), paths[0]]) == 0
    line = capsys.readouterr().out
    assert line.startswith(paths[0]) and "distances" in line and "9:" in line


def test_predict_bad_image_is_a_clear_error(run, tmp_path, capsys):
    txt = tmp_path / "not_an_image.png"
    txt.write_text("hello")
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), str(txt)]) == 2
    assert "cannot read" in capsys.readouterr().err
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (50, 40), 230).save(blank)
    # a blank page is an answer (rejected: no digit), not a failed file
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), str(blank)]) == 0
    assert "reject (no digit" in capsys.readouterr().out


def test_predict_without_pillow_says_so(run, tmp_path, capsys, monkeypatch):
    from lenet5_fast import imageio

    def missing():
        raise T.MissingExtra("pillow is not installed; install it with `pip install 'lenet5_fast[plot]'`")

    monkeypatch.setattr(imageio, "_pil", missing)
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), str(tmp_path / "x.png")]) == 2
    assert "pillow is not installed" in capsys.readouterr().err
