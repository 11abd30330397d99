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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lenet5-fast", description="LeNet-5 (LeCun et al. 1998) on native kernels")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("summary", help="per-layer maps, parameters and connections")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--variant", default="classic", choices=["classic", "modern"])
    s.add_argument("--in-channels", type=int, default=1)
    s.set_defaults(func=_cmd_summary)

    c = sub.add_parser("codes", help="print the 10 stylized 7x12 output codes")
    c.set_defaults(func=_cmd_codes)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"lenet5-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
