"""Every example of README.md runs (issue 24 item 5): each fenced ```python block, and every
`lenet5-fast` command of the fenced ```bash blocks, as a reader would type them, in a fresh
directory beside which ``../shared/data/mnist`` is the MNIST the tests use.

The commands are run as written except for these visible substitutions: the placeholders
``DIR`` (MNIST), ``RUN_DIR`` (one run directory for the whole block) and ``RUN`` (a new run
directory per command); optional parts in brackets (``[--distort]``) are given; and every
``train`` is shortened (``--epochs`` 1, or 2 for a ``--resume`` that asks for more passes, on
300 training and 200 test images), so that it runs in seconds and still checks every flag.
Images named by ``predict`` are made from MNIST test digits. :data:`NOT_RUN` lists what is not
run, with the reason."""
import gzip
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from package_env import package_env

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# command prefix -> why it is not run here
NOT_RUN = {
    "lenet5-fast train --dataset cifar10": "downloads CIFAR-10 (no network here; the loader and CLI are tested "
                                          "on generated archives in test_cifar.py)",
    "lenet5-fast train --dataset fashion-mnist": "needs Debian's dataset-fashion-mnist "
                                                 "(/usr/share/datasets/fashion-mnist)",
}
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _blocks(lang):
    return [m.group(1) for m in re.finditer(r"```" + lang + r"\n(.*?)```", README, re.S)]


def _commands(block):
    """The `lenet5-fast` commands of a bash block (continuation lines joined, comments dropped)."""
    cmds = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].split(" # ")[0].strip()
        if line.startswith("lenet5-fast"):
            cmds.append(line)
    return cmds


BASH = [(i, c) for i, b in enumerate(_blocks("bash")) if _commands(b) for c in [_commands(b)]]
PYTHON = _blocks("python")


def _not_run(cmd):
    for prefix, why in NOT_RUN.items():
        if cmd.startswith(prefix) and not (prefix.endswith("fashion-mnist") and FASHION.is_dir()):
            return why
    return None


def _shorten(cmd, n):
    """A train command made quick (see the module's doc); the placeholders filled in."""
    cmd = cmd.replace("RUN_DIR", "runs/RUN_DIR")
    cmd = re.sub(r"\bRUN\b", f"runs/run{n}", cmd)
    cmd = re.sub(r"\bDIR\b", "../shared/data/mnist", cmd)
    cmd = re.sub(r"\[(--[\w-]+)\]", r"\1", cmd)
    words = shlex.split(cmd)
    if len(words) > 1 and words[1] == "train":
        resume = "--resume" in words
        if "--epochs" in words:
            words[words.index("--epochs") + 1] = "2" if resume else "1"
        elif not resume:
            words += ["--epochs", "1"]
        if not resume:
            words += ["--train-limit", "300", "--test-limit", "200"]
        cmd = " ".join(shlex.quote(w) if "$(" not in w else f'"{w}"' for w in words)
    return cmd


def _mnist_digits(mnist_dir, n):
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8)[16:16 + 784 * n].reshape(n, 28, 28)


@pytest.fixture
def reader_dir(tmp_path, mnist_dir):
    """A fresh working directory with ../shared/data/mnist, the photos `predict` is given, and a
    `lenet5-fast` on PATH that runs this source tree."""
    from PIL import Image

    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "mnist").symlink_to(mnist_dir)
    work = tmp_path / "work"
    work.mkdir()
    for name, digit in zip(("photo.jpg", "scan.png", "photo1.jpg", "scan2.png"), _mnist_digits(mnist_dir, 4)):
        ink = Image.fromarray(255 - digit).resize((140, 140), Image.BILINEAR)  # dark ink on white paper
        page = Image.new("L", (220, 220), 250)
        page.paste(ink, (40, 40))
        page.convert("RGB").save(work / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lenet5-fast"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m lenet5_fast \"$@\"\n")
    shim.chmod(0o755)
    env = package_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return work, env


def test_the_readme_has_examples():
    assert len(PYTHON) >= 3 and len(BASH) >= 7


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs(index, reader_dir):
    work, env = reader_dir
    r = subprocess.run([sys.executable, "-c", PYTHON[index]], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"README python block {index}:\n{PYTHON[index]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("index", range(len(BASH)), ids=[f"block{i}" for i, _ in BASH])
def test_lenet5_fast_commands_run(index, reader_dir):
    work, env = reader_dir
    block, cmds = BASH[index]
    ran = 0
    for n, cmd in enumerate(cmds):
        if _not_run(cmd):
            continue
        line = _shorten(cmd, n)
        r = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README command {cmd!r}, run as {line!r}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        ran += 1
    if not ran:
        pytest.skip("; ".join(sorted({_not_run(c) for c in cmds})))


def test_not_run_lists_only_commands_the_readme_has():
    every = [c for _, cmds in BASH for c in cmds]
    for prefix in NOT_RUN:
        assert any(c.startswith(prefix) for c in every), prefix
