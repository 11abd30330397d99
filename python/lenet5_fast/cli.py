"""The ``lenet5-fast`` command line. A user error (a bad argument, a missing or corrupt file, a
run that cannot be resumed as asked) is one line on stderr and exit code 2; Ctrl-C is exit 130
(``train`` first saves a checkpoint to resume from)."""
from __future__ import annotations

import argparse
import json
import math
import sys


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
                   "momentum", "distort", "variant", "seed", "train_limit", "test_limit", "no_fused", "init")


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

    from .checkpoint import model_from_checkpoint
    from .data import load_tensors
    from .train import MissingExtra, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_from_checkpoint(args.checkpoint)
    x, y = load_tensors(args.data, "test", download=args.download, limit=args.limit)
    errors, loss, pred = evaluate(model, x, y, return_predictions=True)
    res = dict(checkpoint=str(args.checkpoint), samples=int(x.shape[0]), errors=errors,
               test_error=100.0 * errors / x.shape[0], test_loss=loss, gallery=None)
    gallery_note = None
    if not args.no_gallery:
        path = Path(args.gallery) if args.gallery else Path(args.checkpoint).parent / "misclassified.png"
        wrong = (pred != y).nonzero().flatten()[:args.gallery_max]
        try:
            from .imageio import save_gallery

            save_gallery(path, x[wrong], [f"{int(y[i])}->{int(pred[i])}" for i in wrong],
                         title=f"{errors} misclassified of {x.shape[0]} test digits (true->predicted)")
            res["gallery"] = str(path)
        except MissingExtra as e:
            gallery_note = f"gallery not written: {e}"
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"test error {res['test_error']:.2f}% ({errors} of {res['samples']}), mean loss {loss:.4f}")
        if res["gallery"]:
            print(f"misclassified digits: {res['gallery']}")
    if gallery_note:
        print(f"lenet5-fast: note: {gallery_note}", file=sys.stderr)
    return 0


def _cmd_predict(args) -> int:
    import torch

    from .checkpoint import model_from_checkpoint
    from .imageio import load_digit

    model = model_from_checkpoint(args.checkpoint)
    results = []
    for path in args.images:
        x = load_digit(path)
        with torch.no_grad():
            out = model(x)[0]
        cls = int(model.scores(out[None]).argmax(1))
        key = "distances" if model.variant == "classic" else "logits"
        results.append({"image": str(path), "class": cls, key: [round(float(v), 4) for v in out]})
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results if not args.json else []:
        key = "distances" if "distances" in r else "logits"
        vals = "  ".join(f"{d}:{v:.2f}" for d, v in enumerate(r[key]))
        print(f"{r['image']}: {r['class']}    {key} {vals}")
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


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return v


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lenet5-fast", description="LeNet-5 (LeCun et al. 1998) on native kernels")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("summary", help="per-layer maps, parameters and connections")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--variant", default="classic", choices=["classic", "modern"])
    s.add_argument("--in-channels", type=_positive_int, default=1)
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
    t.add_argument("--out", required=True, help="run directory: checkpoints, metrics.json, errors.png")
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
    t.add_argument("--distort", action="store_true", default=S, help="random affine distortions on the fly")
    t.add_argument("--variant", default=S, choices=["classic", "modern"], help="default classic")
    t.add_argument("--init", default=S, choices=["paper", "he"],
                   help="initial weights: the paper's (uniform +-2.4/fan-in; the default, except for the modern "
                        "variant with sgd or sdlm) or 'he' (the modern variant's ReLU layers)")
    t.add_argument("--seed", type=_int_at_least(0, 2**32 - 1), default=S, help="default 0")
    t.add_argument("--train-limit", type=_positive_int, default=S, help="use only the first N training samples")
    t.add_argument("--test-limit", type=_positive_int, default=S, help="use only the first N test samples")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings it was started with")
    t.add_argument("--no-fused", action="store_true", default=S, help="never use the fused native engine")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="test error of a checkpoint, and a gallery of its mistakes")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="directory with the MNIST test files")
    e.add_argument("--download", action="store_true", help="download MNIST into --data when missing (md5-checked)")
    e.add_argument("--json", action="store_true", help="print JSON (test_error in percent)")
    e.add_argument("--gallery", default=None, help="PNG path (default: misclassified.png next to the checkpoint)")
    e.add_argument("--gallery-max", type=_positive_int, default=100,
                   help="at most this many digits in the gallery (default 100)")
    e.add_argument("--no-gallery", action="store_true")
    e.add_argument("--limit", type=_positive_int, default=None, help="use only the first N test samples")
    e.add_argument("--threads", type=_positive_int, default=None)
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("predict", help="classify photos or scans of handwritten digits")
    r.add_argument("images", nargs="+", help="PNG/JPG files, one digit each")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_predict)
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
