"""What each layer of LeNet-5 computes for one image, in one picture (like the paper's Fig. 13
panels): the input; the C1, S2, C3 and S4 feature maps as image grids; C5 and F6 as bars; and
the output. For the paper's network the output panel shows the 10 RBF distances next to the
7x12 codes they are measured against, with F6's 84 outputs drawn as a 7x12 bitmap above them
(what the network "writes" for this image); for the other variants, the 10 class probabilities.
Needs matplotlib (``pip install 'lenet5_fast[plot]'``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .model import LAYER_NAMES
from .ops import SCALED_TANH

__all__ = ["layer_outputs", "load_input", "render_feature_maps", "class_names", "FASHION_CLASSES"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
_MAP_ROWS = (("c1", "C1"), ("s2", "S2"), ("c3", "C3"), ("s4", "S4"))
_BAR_ROWS = (("c5", "C5"), ("f6", "F6"))


def class_names(dataset: str) -> Sequence[str]:
    if dataset == "cifar10":
        from .cifar import CLASSES
        return CLASSES
    return FASHION_CLASSES if dataset == "fashion-mnist" else tuple(str(d) for d in range(10))


@torch.no_grad()
def layer_outputs(model, x: Tensor) -> Dict[str, Tensor]:
    """Every layer's output for one image ``x [1, C, 32, 32]``, batch dimension dropped."""
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != model.in_channels:
        raise ValueError(f"expected one {model.in_channels}-channel image [1, {model.in_channels}, 32, 32], "
                         f"got shape {tuple(x.shape)}")
    model.eval()
    outs = {"input": x[0]}
    for name in LAYER_NAMES:
        x = getattr(model, name)(x)
        outs[name] = x[0]
    return outs


def load_input(spec: str, model, dataset: str, data_dir=None) -> Tuple[Tensor, Optional[int], str]:
    """The image ``spec`` names: a test-set index of ``dataset``, or an image file (a photo of
    one digit for 1-channel models, any RGB picture scaled to 32x32 for 3-channel ones).
    Returns (x [1, C, 32, 32], true label or None, a description)."""
    from .train import dataset_channels, load_dataset

    if spec.isdigit():
        if dataset_channels(dataset) != model.in_channels:
            raise ValueError(f"the model takes {model.in_channels}-channel images; {dataset} has "
                             f"{dataset_channels(dataset)} (choose another --dataset)")
        index = int(spec)
        x, y = load_dataset(dataset, data_dir, "test", limit=index + 1)
        if index >= x.shape[0]:
            raise ValueError(f"index {index} is past the end of the {dataset} test set ({x.shape[0]} images)")
        return x[index:index + 1], int(y[index]), f"{dataset} test image {index}"
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec} is neither a test-set index nor an image file")
    if model.in_channels == 1:
        from .imageio import load_digit
        return load_digit(path), None, str(path)
    return _load_rgb(path), None, str(path)


def _load_rgb(path: Path) -> Tensor:
    import numpy as np

    from .cifar import preprocess_cifar
    from .imageio import _pil

    Image = _pil()
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from e
    return preprocess_cifar(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].contiguous())


def _label(fig, spec, text: str) -> None:
    """Text to the left of a gridspec cell."""
    box = spec.get_position(fig)
    fig.text(box.x0 - 0.006, (box.y0 + box.y1) / 2, text, ha="right", va="center", fontsize=10)


def _plain(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _maps(fig, spec, maps: Tensor) -> None:
    """One layer's feature maps side by side (a 1-pixel gap between them), on one grey scale for
    the whole layer, in one image; room is left for 16 maps so that every row has the same scale."""
    import numpy as np

    m = maps.float().numpy()
    n, h, w = m.shape
    lo, hi = float(m.min()), float(m.max())
    tiled = np.full((h, 16 * (w + 1) - 1), np.nan)
    for k in range(n):
        tiled[:, k * (w + 1):k * (w + 1) + w] = m[k]
    ax = _plain(fig.add_subplot(spec))
    ax.imshow(tiled, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest",
              aspect="equal")
    ax.set_anchor("W")
    for side in ax.spines.values():
        side.set_visible(False)


def _bars(fig, spec, values: Tensor) -> None:
    ax = fig.add_subplot(spec)
    v = values.float().flatten().numpy()
    ax.vlines(range(len(v)), 0, v, colors="0.3", linewidth=3.2 if len(v) < 100 else 2.6)
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_xlim(-1, len(v))
    ax.yaxis.tick_right()
    ax.tick_params(labelsize=7)


def render_feature_maps(model, x: Tensor, path, title: str = "", label: Optional[int] = None,
                        names: Optional[Sequence[str]] = None) -> int:
    """Draws the picture for image ``x [1, C, 32, 32]`` to the PNG ``path`` (1300x900 pixels,
    written atomically) and returns the predicted class."""
    from .checkpoint import atomic_write_bytes
    from .codes import CODE_COLS, CODE_ROWS
    from .train import _pyplot

    plt = _pyplot()
    outs = layer_outputs(model, x)
    scores = model.scores(outs["output"][None])[0]
    pred = int(scores.argmax())
    names = [str(n) for n in names] if names is not None else [str(d) for d in range(len(scores))]
    names += [str(i) for i in range(len(names), len(scores))]

    fig = plt.figure(figsize=(13, 9), dpi=100)
    outer = fig.add_gridspec(1, 2, width_ratios=[3.2, 1], left=0.085, right=0.98, top=0.92, bottom=0.04,
                             wspace=0.1)
    rows = outer[0, 0].subgridspec(7, 1, height_ratios=[1.6, 1, 1, 1, 1, 1, 1], hspace=0.35)
    inp = outs["input"].float()
    _label(fig, rows[0], f"input\n{inp.shape[0]}@{inp.shape[1]}x{inp.shape[2]}")
    ax = _plain(fig.add_subplot(rows[0]))
    ax.set_anchor("W")
    if inp.shape[0] == 3:
        ax.imshow(inp.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    else:
        ax.imshow(inp[0].numpy(), cmap="gray_r", interpolation="nearest")
    for r, (key, name) in enumerate(_MAP_ROWS, start=1):
        m = outs[key]
        _label(fig, rows[r], f"{name}\n{m.shape[0]}@{m.shape[1]}x{m.shape[2]}")
        _maps(fig, rows[r], m)
    for r, (key, name) in enumerate(_BAR_ROWS, start=5):
        _label(fig, rows[r], f"{name}\n{outs[key].numel()}")
        _bars(fig, rows[r], outs[key])

    out = outs["output"].float()
    marks = [(names[i] if names[i] != str(i) else "") + ("  (true)" if label == i else "") for i in range(len(out))]
    if model.variant == "classic":
        from .codes import output_codes

        right = outer[0, 1].subgridspec(2, 2, width_ratios=[0.13, 1], height_ratios=[1.3, 5], hspace=0.08,
                                        wspace=0.03)
        ax = _plain(fig.add_subplot(right[0, 0:2]))
        ax.imshow(outs["f6"].float().reshape(CODE_ROWS, CODE_COLS).numpy(), cmap="gray_r", vmin=-SCALED_TANH[0],
                  vmax=SCALED_TANH[0], interpolation="nearest")  # the squashing's range, +-1.7159
        ax.set_anchor("W")
        ax.set_title("F6 as a 7x12 bitmap", fontsize=9, loc="left")
        codes = output_codes()
        ax = _plain(fig.add_subplot(right[1, 0]))
        for i in range(len(out)):
            ax.imshow(codes[i].reshape(CODE_ROWS, CODE_COLS).numpy(), cmap="gray_r", interpolation="nearest",
                      extent=(0, 1, i + 0.42, i - 0.42))
        ax.set_xlim(0, 1)
        ax.set_ylim(len(out) - 0.5, -0.5)
        ax.set_aspect("auto")
        ax.axis("off")
        ax.set_title("RBF distance to each code", fontsize=9, loc="left")
        values, texts, limit = out, [f" {float(v):.1f}  {m}" for v, m in zip(out, marks)], float(out.max()) * 1.05
        bars = fig.add_subplot(right[1, 1])
    else:
        values = torch.softmax(out, 0)
        texts, limit = [f" {float(v):.3f}  {m}" for v, m in zip(values, marks)], 1.0
        bars = fig.add_subplot(outer[0, 1].subgridspec(2, 1, height_ratios=[1.3, 5])[1])
        bars.set_title("class probabilities (softmax)", fontsize=9, loc="left")
    bars.barh(range(len(values)), values.numpy(), height=0.7,
              color=["tab:red" if i == pred else "0.6" for i in range(len(values))])
    for i, t in enumerate(texts):
        bars.text(0, i, t, va="center", fontsize=8)
    bars.set_xlim(0, limit if limit > 0 else 1.0)
    bars.set_ylim(len(values) - 0.5, -0.5)
    bars.axis("off")

    head = f"LeNet-5 ({model.variant}): predicted {names[pred]}"
    if label is not None:
        head += f", true {names[label] if 0 <= label < len(names) else label}"
    fig.suptitle(f"{title}: {head}" if title else head, fontsize=12)
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return pred
