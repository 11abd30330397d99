"""The ``lenet5-fast`` command line."""
from __future__ import annotations

import argparse
import json
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


def _cmd_train(args) -> int:
    import torch

    from .train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(epochs=args.epochs, optimizer=args.optimizer, batch_size=args.batch_size, lr=args.lr,
                      eta_scale=args.eta_scale, hessian_samples=args.hessian_samples,
                      momentum=args.momentum, distort=args.distort, variant=args.variant, seed=args.seed,
                      train_limit=args.train_limit, test_limit=args.test_limit, fused=not args.no_fused,
                      mu=args.mu, **({"max_step": args.max_step} if hasattr(args, "max_step") else {}))
    m = train(cfg, args.data, args.out, resume=args.resume, log=lambda s: print(s, flush=True),
              command="lenet5-fast " + " ".join(args.argv), download=args.download)
    print(f"done: {m['passes']} passes, test error {m['test_error']:.2f}%, "
          f"{m['wall_seconds'] / 60:.1f} min; {args.out}/metrics.json")
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


def _float_or_none(text: str):
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _version() -> str:
    from . import __version__

    import torch

    return f"lenet5-fast {__version__} (torch {torch.__version__})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lenet5-fast", description="LeNet-5 (LeCun et al. 1998) on native kernels")
    p.add_argument("--version", action="version", version=_version(),
                   help="print the version of lenet5_fast (and of torch) and exit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("summary", help="per-layer maps, parameters and connections")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--variant", default="classic", choices=["classic", "modern"],
                   help="the paper's network (classic, default) or the ReLU/max-pool/softmax one (modern)")
    s.add_argument("--in-channels", type=int, default=1, help="input channels (default 1; modern variant only)")
    s.set_defaults(func=_cmd_summary)

    c = sub.add_parser("codes", help="print the 10 stylized 7x12 output codes")
    c.set_defaults(func=_cmd_codes)

    t = sub.add_parser("train", help="train LeNet-5 on MNIST as in the paper")
    t.add_argument("--data", default=None, help="directory with the four MNIST .gz files")
    t.add_argument("--download", action="store_true", help="download MNIST into --data when missing (md5-checked)")
    t.add_argument("--out", required=True, help="run directory: checkpoints, metrics.json, errors.png")
    t.add_argument("--epochs", type=int, default=20, help="passes over the training set (default 20)")
    t.add_argument("--optimizer", default="sdlm", choices=["sdlm", "sgd", "adam"],
                   help="sdlm (the paper's, default), sgd (with --momentum) or adam")
    t.add_argument("--batch-size", type=int, default=1, help="1 = per-sample updates, as in the paper")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (sgd 0.01, adam 0.001); for sdlm a constant eta instead of the paper's schedule")
    t.add_argument("--eta-scale", type=float, default=1.0, help="sdlm: multiply the paper's eta schedule")
    t.add_argument("--mu", type=float, default=0.02, help="sdlm: mu (default 0.02, the paper's)")
    t.add_argument("--max-step", type=_float_or_none, default=argparse.SUPPRESS,
                   help="sdlm: bound on every step eta/(mu+h), by raising mu to eta/max-step when needed "
                        "(default 0.0005, the paper's last eta/mu; 'none': the paper's exact steps, which diverge)")
    t.add_argument("--hessian-samples", type=int, default=500, help="sdlm: samples for h_kk (default 500)")
    t.add_argument("--momentum", type=float, default=0.9, help="sgd momentum")
    t.add_argument("--distort", action="store_true", help="random affine distortions on the fly")
    t.add_argument("--variant", default="classic", choices=["classic", "modern"],
                   help="the paper's network (classic, default) or the ReLU/max-pool/softmax one (modern)")
    t.add_argument("--seed", type=int, default=0, help="seed of everything random in the run (default 0)")
    t.add_argument("--train-limit", type=int, default=None, help="use only the first N training samples")
    t.add_argument("--test-limit", type=int, default=None, help="use only the first N test samples")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--no-fused", action="store_true", help="never use the fused native engine")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="test error of a checkpoint, and a gallery of its mistakes")
    e.add_argument("--checkpoint", required=True, help="checkpoint file written by `lenet5-fast train`")
    e.add_argument("--data", default=None, help="directory with the MNIST test files")
    e.add_argument("--download", action="store_true", help="download MNIST into --data when missing (md5-checked)")
    e.add_argument("--json", action="store_true", help="print JSON (test_error in percent)")
    e.add_argument("--gallery", default=None, help="PNG path (default: misclassified.png next to the checkpoint)")
    e.add_argument("--gallery-max", type=int, default=100, help="at most this many digits in the gallery")
    e.add_argument("--no-gallery", action="store_true", help="do not draw the misclassified digits")
    e.add_argument("--limit", type=int, default=None, help="use only the first N test samples")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("predict", help="classify photos or scans of handwritten digits")
    r.add_argument("images", nargs="+", help="PNG/JPG files, one digit each")
    r.add_argument("--checkpoint", required=True, help="checkpoint file written by `lenet5-fast train`")
    r.add_argument("--json", action="store_true", help="print JSON (class and distances or logits per image)")
    r.set_defaults(func=_cmd_predict)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"lenet5-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
