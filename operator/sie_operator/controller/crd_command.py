"""``sie-operator crd``: print the ModelConfig CRD.

Why a command: the CRD is generated from the pydantic models, so installing it from the
binary you run (``sie-operator crd | kubectl apply --server-side -f -``) can never install a
schema that disagrees with the operator's code; ``crds/modelconfig.yaml`` is this output.
"""

from __future__ import annotations

import argparse
import json
import sys

from .crd import build_crd, render_crd_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=["yaml", "json"], default="yaml", help="output format (default: yaml)"
    )


def run(args: argparse.Namespace) -> int:
    if args.output == "json":
        sys.stdout.write(json.dumps(build_crd(), indent=2) + "\n")
    else:
        sys.stdout.write(render_crd_yaml())
    return 0
