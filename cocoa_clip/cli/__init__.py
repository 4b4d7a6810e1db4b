"""Command line: `cocoa-clip explain|evaluate|compare|models|download|batch|serve` (or `python -m cocoa_clip ...`).

    cocoa-clip explain dog.jpg --corpus dog --foil cat --out overlay.png
    cocoa-clip explain photos/*.jpg --corpus dog --foil cat --out maps/{stem}.png
    cocoa-clip evaluate dog.jpg --corpus dog --foil-preset cifar100 --json
    cocoa-clip compare park.jpg --caption dog --caption grass --caption sky
    cocoa-clip batch photos/ --corpus dog --foil cat --out-dir results --engine ray
    cocoa-clip serve --model shapes-demo --port 7861
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import AUDIENCE, CocoaError
from ..models import download
from ..models.weights import report_sources
from . import commands
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv) if argv[:1] != ["serve"] else None
    if args is not None:
        report_sources(not getattr(args, "quiet", False) and args.command != "models")  # models: a listing, no log
    # Advice in errors names commands and flags (`download` never advises itself), not Python calls.
    audience = AUDIENCE.set("download" if args is not None and args.command == "download" else "cli")
    try:
        if args is None:
            return commands.serve(argv[1:])
        if args.command == "models":
            return commands.models_command(args.all)
        if args.command == "download":
            found = download(args.name, revision=args.revision, trust_checkpoint=args.trust_checkpoint)
            print(f"{args.name}: {found.path} ({found.source})")
            return 0
        return commands.run(args)
    except CocoaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"error: {error.strerror or error} ({error.filename or 'file'})", file=sys.stderr)
        return 2
    finally:
        AUDIENCE.reset(audience)
