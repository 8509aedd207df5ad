"""``python -m ssmad.core plugins [--kind KIND] [--json]``: list every registered component."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import PluginWarning, SsmadError
from .registry import KINDS, registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmad.core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list registered components")
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        reg = registry()
        with warnings.catch_warnings():   # listed below (or in the JSON), one line each
            warnings.simplefilter("ignore", PluginWarning)
            comps = reg.components(args.kind)
    except SsmadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps({"components": [c.as_dict() for c in comps], "plugin_errors": reg.plugin_errors},
                         indent=2, default=str))
        return 0
    rows = [(c.kind, c.name, f"{c.distribution} {c.version}", c.summary
             + (f" (overrides {c.overrides})" if c.overrides else "")) for c in comps]
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("KIND", "NAME", "FROM"))]
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'FROM':<{widths[2]}}  SUMMARY")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    for err in reg.plugin_errors:
        print(f"warning: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
