"""The ``lenet5-fast`` command line. A user error (a bad argument, a missing or corrupt file, a
run that cannot be resumed as asked) is one line on stderr and exit code 2; Ctrl-C is exit 130
(``train`` first saves a checkpoint to resume from)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# the datasets of lenet5_fast.train.DATASETS, here so that `--help` imports no torch
DATASET_CHOICES = ("mnist", "fashion-mnist", "cifar10")


def _cmd_summary(args) -> int:
    from .model import LeNet5, format_summary, summary

    s = summary(LeNet5(variant=args.variant, in_channels=args.in_channels))
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def _cmd_codes(args) -> int:
    from .codes import render_codes

    print(render_codes())
    return 0


# The train flags that are settings of the run (TrainConfig fields): given explicitly or not at
# all (argparse.SUPPRESS), so that a resumed run can tell them from defaults.
_TRAIN_SETTINGS = ("epochs", "optimizer", "batch_size", "lr", "eta_scale", "mu", "max_step", "hessian_samples",
                   "momentum", "nesterov", "dataset", "distort", "variant", "seed", "train_limit", "test_limit",
                   "no_fused", "init")


def _cmd_train(args) -> int:
    import torch

    from .train import TrainConfig, check_settings, train

    if args.threads:
        torch.set_num_threads(args.threads)
    given = {name: getattr(args, name) for name in _TRAIN_SETTINGS if hasattr(args, name)}
    if "no_fused" in given:
        given["fused"] = not given.pop("no_fused")
    if args.resume:
        cfg = given  # checked against the run's own settings
    else:
        check_settings(given)
        cfg = TrainConfig(**given)
    m = train(cfg, args.data, args.out, resume=args.resume, log=lambda s: print(s, flush=True),
              command="lenet5-fast " + " ".join(args.argv), download=args.download)
    test = f", test error {m['test_error']:.2f}%" if m["test_error"] is not None else ""
    print(f"done: {m['passes']} passes{test}, {m['wall_seconds'] / 60:.1f} min; {args.out}/metrics.json")
    return 0


def _cmd_eval(args) -> int:
    from pathlib import Path

    import torch

    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .confidence import classify, model_outputs, plot_rejection, rejection_for_error
    from .train import MissingExtra, evaluate, load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ck)
    dataset = args.dataset or _checkpoint_dataset(ck)
    x, y = load_dataset(dataset, _data_dir(args.data, ck, dataset), "test", download=args.download, limit=args.limit)
    errors, loss, pred = evaluate(model, x, y, return_predictions=True)
    res = dict(checkpoint=str(args.checkpoint), dataset=dataset, samples=int(x.shape[0]), errors=errors,
               test_error=100.0 * errors / x.shape[0], test_loss=loss, gallery=None)
    # the paper's rejection performance: reject the least confident until 0.5% error remain
    conf = classify(model, model_outputs(model, x)).confidence.numpy()
    res["rejection_for_0.5pct_error"], res["rejection_threshold"] = rejection_for_error(conf, (pred == y).numpy())
    res["rejection_plot"] = None
    gallery_note = None
    if not args.no_gallery and x.shape[1] != 1:
        gallery_note = "gallery not written: it draws 1-channel digits only"
    elif not args.no_gallery:
        path = Path(args.gallery) if args.gallery else _default_gallery(args.checkpoint)
        wrong = (pred != y).nonzero().flatten()[:args.gallery_max]
        try:
            from .imageio import save_gallery

            save_gallery(path, x[wrong], [f"{int(y[i])}->{int(pred[i])}" for i in wrong],
                         title=f"{errors} misclassified of {x.shape[0]} test digits (true->predicted)")
            res["gallery"] = str(path)
            plot_rejection(path.with_name("rejection.png"), conf, (pred == y).numpy(),
                           title=f"{Path(args.checkpoint).name}: error against rejection ({x.shape[0]} test digits)")
            res["rejection_plot"] = str(path.with_name("rejection.png"))
        except MissingExtra as e:
            gallery_note = f"gallery not written: {e}"
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"test error {res['test_error']:.2f}% ({errors} of {res['samples']}), mean loss {loss:.4f}")
        print(f"rejection for 0.5% error: {res['rejection_for_0.5pct_error']:.2f}% of the test digits "
              f"(confidence below {res['rejection_threshold']:.3g})")
        if res["gallery"]:
            print(f"misclassified digits: {res['gallery']}; error against rejection: {res['rejection_plot']}")
    if gallery_note:
        print(f"lenet5-fast: note: {gallery_note}", file=sys.stderr)
    return 0


def _predict_model(args):
    """The model ``predict`` uses: --checkpoint, --weights NAME (one network), or by default the
    ensemble of the shipped networks (the mixture of their posteriors)."""
    from . import weights
    from .checkpoint import model_from_checkpoint
    from .confidence import Ensemble

    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint)
    if args.weights:
        return weights.load(args.weights)
    return Ensemble.from_pretrained()


def _predict_one(model, path, reject, show_dir):
    """One image -> its result dict (raises ValueError/OSError for this file alone)."""
    from pathlib import Path

    from .confidence import Ensemble, classify, model_outputs
    from .imageio import NoDigit, read_digit, save_input_png

    try:
        digit = read_digit(path)
    except NoDigit as e:                    # an answer, not a failure: reject
        return {"image": str(path), "class": None, "confidence": 0.0, "margin": 0.0, "rejected": True,
                "reason": str(e).replace(f"{path}: ", "", 1)}
    out = model_outputs(model, digit.input)
    p = classify(model, out)
    cls, conf, margin = int(p.label[0]), float(p.confidence[0]), float(p.margin[0])
    r = {"image": str(path), "class": cls, "confidence": float(f"{conf:.6g}"), "margin": round(margin, 4),
         "rejected": False}
    if isinstance(model, Ensemble):         # the mixture, and what each network says
        r["posterior"] = [round(float(v), 4) for v in p.posterior[0]]
        r["networks"] = {}
        for name, m, o in zip(model.names, model.models, out):
            q = classify(m, o)
            r["networks"][name] = {"class": int(q.label[0]), "confidence": float(f"{float(q.confidence[0]):.4g}")}
    else:
        key = "distances" if model.variant == "classic" else "logits"
        r[key] = [round(float(v), 4) for v in out[0]]
    if reject > 0 and conf < reject:
        r.update(rejected=True, reason=f"confidence {conf:.3g} below {reject:g}")
    elif reject > 0 and digit.ink.several:
        r.update(rejected=True, reason="more than one mark the size of a digit (several digits?)")
    if show_dir is not None:
        png = (Path(show_dir) if show_dir else Path(path).parent) / f"{Path(path).name}.lenet5.png"
        save_input_png(png, digit.input)
        r["input_png"] = str(png)
    return r


def _predict_details(r) -> str:
    """The per-network (ensemble) or per-class (one network) numbers of a result, for its line."""
    if "networks" in r:
        return "networks " + "  ".join(f"{n}:{v['class']} ({v['confidence']:.2g})" for n, v in r["networks"].items())
    key = "distances" if "distances" in r else "logits"
    return f"{key} " + "  ".join(f"{d}:{v:.2f}" for d, v in enumerate(r[key]))


def _cmd_predict(args) -> int:
    import torch

    from .confidence import default_reject
    from .imageio import _ndimage, _pil

    if args.threads:
        torch.set_num_threads(args.threads)
    _pil(), _ndimage()                      # a missing extra is one error, not one per file
    model = _predict_model(args)
    reject = default_reject(model) if args.reject is None else args.reject
    show_dir = args.debug_dir if args.debug_dir else ("" if args.show else None)
    results, failed = [], 0
    for path in args.images:
        try:
            r = _predict_one(model, path, reject, show_dir)
        except (ValueError, OSError) as e:
            failed += 1
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            r = {"image": str(path), "error": msg}
            if not args.json:
                print(f"lenet5-fast: error: {msg}", file=sys.stderr, flush=True)
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
        elif r.get("class", 0) is None:
            print(f"{r['image']}: reject ({r['reason']})", flush=True)
        elif "error" not in r:
            answer = f"reject ({r['reason']}; best {r['class']})" if r["rejected"] else str(r["class"])
            margin = f"{r['margin']:.2f}" if "networks" not in r else f"{r['margin']:.3g}"
            print(f"{r['image']}: {answer}    confidence {r['confidence']:.3g}  margin {margin}    "
                  f"{_predict_details(r)}" + (f"    input: {r['input_png']}" if "input_png" in r else ""),
                  flush=True)
    if failed:
        print(f"lenet5-fast: {failed} of {len(results)} images failed", file=sys.stderr)
    return 2 if failed else 0


def _cmd_weights(args) -> int:
    from . import weights

    if args.path:
        print(weights.path(args.path))
        return 0
    entries = [weights.info(n) for n in weights.list()]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        star = " (default)" if e["name"] == weights.DEFAULT else ""
        print(f"{e['name']:<15} {e['variant']:<8} test error {e['test_error']:.2f}%  {e['description']}{star}")
    return 0


def _default_gallery(checkpoint):
    """misclassified.png next to the checkpoint, or in the current directory when the checkpoint
    is one of the package's own files (shipped weights): never into the installed package."""
    from pathlib import Path

    folder, package = Path(checkpoint).resolve().parent, Path(__file__).resolve().parent
    if folder == package or package in folder.parents:
        return Path("misclassified.png")
    return Path(checkpoint).parent / "misclassified.png"


def _data_dir(given, ck, dataset: str):
    """The data directory: ``--data`` if given, else the one the checkpoint's run read
    ``dataset`` from (where it still exists), else None (the dataset's default)."""
    if given is not None:
        return given
    from pathlib import Path

    cfg = ck["meta"].get("config")
    recorded = cfg.get("data_dir") if isinstance(cfg, dict) and cfg.get("dataset", "mnist") == dataset else None
    return recorded if isinstance(recorded, str) and Path(recorded).is_dir() else None


def _checkpoint_dataset(ck) -> str:
    """The dataset a checkpoint was trained on (its saved training config), else MNIST."""
    cfg = ck["meta"].get("config")
    dataset = cfg.get("dataset") if isinstance(cfg, dict) else None
    return dataset if isinstance(dataset, str) else "mnist"


def _cmd_show(args) -> int:
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .show import class_names, load_input, render_feature_maps

    if (args.checkpoint is None) == (args.weights is None):
        raise ValueError("give exactly one of --checkpoint PATH and --weights NAME")
    if args.checkpoint is not None:
        ck = load_checkpoint(args.checkpoint)
        model, dataset = model_from_checkpoint(ck), args.dataset or _checkpoint_dataset(ck)
        data = _data_dir(args.data, ck, dataset)
    else:
        try:
            weights = importlib.import_module("lenet5_fast.weights")
        except ImportError:
            raise ValueError("--weights needs the shipped pretrained weights (lenet5_fast.weights), which this "
                             "install does not have; use --checkpoint PATH") from None
        model, dataset, data = weights.load(args.weights).eval(), args.dataset or "mnist", args.data
    x, label, source = load_input(args.image, model, dataset, data)
    names = class_names(dataset)
    pred = render_feature_maps(model, x, args.out, title=source, label=label, names=names)
    print(f"{source}: predicted {names[pred]}; feature maps in {args.out}")
    return 0


def _int_at_least(low: int, high: int = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be {'>= ' + str(low) if high is None else f'in {low}..{high}'}, "
                                             f"got {v}")
        return v
    return parse


_positive_int = _int_at_least(1)


def _float_where(ok, what: str):
    """A parser of numbers for which ok(v) holds; else 'what, got ...'."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return v
    return parse


# float32's largest value: a rate beyond it cannot even be applied to float32 weights
FLOAT32_MAX = 3.4028234663852886e38
_confidence = _float_where(lambda v: 0 <= v <= 1, "must be a confidence in [0, 1]")
_positive_float = _float_where(lambda v: 0 < v <= FLOAT32_MAX, "must be a positive number (at most 3.4e38)")


def _directory(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, got ''")
    return text


def _file(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file, got ''")
    return text
_fraction = _float_where(lambda v: 0 <= v < 1, "must be in [0, 1)")


def _float_or_none(text: str):
    if text.strip().lower() == "none":
        return None
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or 'none')") from None


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from . import __version__

    import torch

    return f"lenet5-fast {__version__} (torch {torch.__version__})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lenet5-fast", description="LeNet-5 (LeCun et al. 1998) on native kernels")
    p.add_argument("--version", action="version", version=_version(),
                   help="print the version of lenet5_fast (and of torch) and exit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("summary", help="per-layer maps, parameters and connections")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--variant", default="classic", choices=["classic", "modern", "keras"],
                   help="the paper's network (classic, default), the ReLU/max-pool/softmax one (modern), "
                        "or the Keras write-up's plain-tanh/average-pool one (keras)")
    s.add_argument("--in-channels", type=_positive_int, default=1, help="input channels (default 1; 3 for CIFAR-10)")
    s.set_defaults(func=_cmd_summary)

    c = sub.add_parser("codes", help="print the 10 stylized 7x12 output codes")
    c.set_defaults(func=_cmd_codes)

    t = sub.add_parser("train", help="train LeNet-5 on MNIST as in the paper",
                       description="Train LeNet-5. The defaults are the paper's recipe (classic network, SDLM, "
                                   "batch 1, 20 passes); other optimizers and the modern variant get defaults "
                                   "of their own (batch 32; see the README). --resume continues the run in "
                                   "--out with every setting it was started with (data directory included); "
                                   "only --epochs may change.")
    S = argparse.SUPPRESS  # a setting given explicitly, or taken from the defaults / the resumed run
    t.add_argument("--data", default=None, help="directory with the four MNIST .gz files (remembered by the run)")
    t.add_argument("--download", action="store_true", help="download MNIST into --data when missing (md5-checked)")
    t.add_argument("--out", required=True, type=_directory, help="run directory: checkpoints, metrics.json, errors.png")
    t.add_argument("--epochs", type=_positive_int, default=S, help="passes over the training set (default 20)")
    t.add_argument("--optimizer", default=S, choices=["sdlm", "sgd", "adam"], help="default sdlm")
    t.add_argument("--batch-size", type=_positive_int, default=S,
                   help="1 = per-sample updates, as in the paper (default: 1 for sdlm, 32 for sgd and adam)")
    t.add_argument("--lr", type=_positive_float, default=S,
                   help="learning rate (defaults per optimizer and variant, see the README); for sdlm a "
                        "constant eta instead of the paper's schedule")
    t.add_argument("--eta-scale", type=_positive_float, default=S, help="sdlm: multiply the paper's eta schedule")
    t.add_argument("--mu", type=_positive_float, default=S, help="sdlm: mu (default 0.02, the paper's)")
    t.add_argument("--max-step", type=_float_or_none, default=S,
                   help="sdlm: bound on every step eta/(mu+h), by raising mu to eta/max-step when needed "
                        "(default 0.0005, the paper's last eta/mu, and 0.002 for the modern variant; 'none': the "
                        "paper's exact steps, which diverge)")
    t.add_argument("--hessian-samples", type=_positive_int, default=S, help="sdlm: samples for h_kk (default 500)")
    t.add_argument("--momentum", type=_fraction, default=S, help="sgd momentum (default 0.9)")
    t.add_argument("--nesterov", action="store_true", default=S, help="sgd: Nesterov momentum")
    t.add_argument("--dataset", default=S, choices=DATASET_CHOICES,
                   help="mnist (default), fashion-mnist (default --data: the directory of Debian's "
                        "dataset-fashion-mnist), cifar10 (3 channels; --download fetches it)")
    t.add_argument("--distort", action="store_true", default=S, help="random affine distortions on the fly")
    t.add_argument("--variant", default=S, choices=["classic", "modern", "keras"],
                   help="the paper's network (classic, default), the ReLU/max-pool/softmax one (modern), "
                        "or the Keras write-up's plain-tanh/average-pool one (keras)")
    t.add_argument("--init", default=S, choices=["paper", "he", "glorot", "pytorch"],
                   help="initial weights: the paper's (uniform +-2.4/fan-in; the classic variant's default), 'he' "
                        "(the modern variant's ReLU layers; its default), 'glorot' (Keras' default; the keras variant's) or 'pytorch' (torch.nn's "
                        "default, +-1/sqrt(fan-in) for weights and biases; modern and keras variants)")
    t.add_argument("--seed", type=_int_at_least(0, 2**32 - 1), default=S, help="default 0")
    t.add_argument("--train-limit", type=_positive_int, default=S, help="use only the first N training samples")
    t.add_argument("--test-limit", type=_positive_int, default=S, help="use only the first N test samples")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings it was started with")
    t.add_argument("--no-fused", action="store_true", default=S, help="never use the fused native engine")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="test error of a checkpoint, and a gallery of its mistakes")
    e.add_argument("--checkpoint", required=True, help="checkpoint file written by `lenet5-fast train`")
    e.add_argument("--data", default=None, help="directory with the test files (default: the one the checkpoint's "
                                                 "run read, where it still exists)")
    e.add_argument("--download", action="store_true", help="download MNIST into --data when missing (md5-checked)")
    e.add_argument("--json", action="store_true", help="print JSON (test_error in percent)")
    e.add_argument("--gallery", default=None, help="PNG path (default: misclassified.png next to the checkpoint; in "
                                                   "the current directory for shipped weights)")
    e.add_argument("--gallery-max", type=_positive_int, default=100,
                   help="at most this many digits in the gallery (default 100)")
    e.add_argument("--no-gallery", action="store_true", help="do not draw the misclassified digits")
    e.add_argument("--limit", type=_positive_int, default=None, help="use only the first N test samples")
    e.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                   help="test set to use (default: the one the checkpoint was trained on)")
    e.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("predict", help="classify photos or scans of handwritten digits")
    r.add_argument("images", nargs="+", help="PNG/JPG/... files, one digit each")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--weights", default=None,
                       help="one network, by the name of its shipped weights (`lenet5-fast weights` lists "
                            "them); default: all three together (the mixture of their posteriors)")
    which.add_argument("--checkpoint", default=None, help="one network: a checkpoint of yours")
    r.add_argument("--reject", type=_confidence, default=None,
                   help="answer 'reject' below this confidence (default 0.38 for the three together, 0.005 "
                        "for one classic network, 0.99 for a modern one; 0: never)")
    r.add_argument("--show", action="store_true",
                   help="write the 32x32 input the network saw next to each image (IMAGE.lenet5.png)")
    r.add_argument("--debug-dir", default=None, help="write those inputs to this directory instead")
    r.add_argument("--json", action="store_true",
                   help="JSON Lines: one JSON object per image, on one line, printed as each image is done "
                        "('error' where it failed)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    r.set_defaults(func=_cmd_predict)

    w = sub.add_parser("show", help="draw what each layer computes for one image (the paper's Fig. 13)")
    w.add_argument("image", help="an image file, or the index of a test-set image")
    w.add_argument("--checkpoint", default=None, help="checkpoint to show")
    w.add_argument("--weights", default=None, help="name of shipped pretrained weights (where installed)")
    w.add_argument("--out", required=True, type=_file, help="PNG to write")
    w.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                   help="test set an index refers to (default: the checkpoint's)")
    w.add_argument("--data", default=None, help="directory of that dataset (default: the one the checkpoint's run "
                                                "read, where it still exists)")
    w.set_defaults(func=_cmd_show)

    ws = sub.add_parser("weights", help="list the pretrained weights shipped with the package")
    ws.add_argument("--json", action="store_true", help="the manifest entries (command, seed, commit, sha256...)")
    ws.add_argument("--path", default=None, metavar="NAME", help="print the file of weights NAME")
    ws.set_defaults(func=_cmd_weights)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (already reported in one line)
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"lenet5-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C; train's own says where it stopped and how to resume
        print(f"lenet5-fast: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
