"""The one `sie-operator` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up, so a broken optional piece cannot
stop the others from loading. Bad configuration becomes a one-line error on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sie_operator.controller.command", "run the operator (kopf + embedded config service)"),
    "config-api": ("sie_operator.configsvc.command", "run the config service without Kubernetes"),
    "gateway": ("sie_operator.gateway.command", "run the companion readiness gateway"),
    "worker": ("sie_operator.worker.command", "run a reference worker (no models, real protocol)"),
    "demo": ("sie_operator.demo.command", "run the whole loop locally and show models reaching Ready"),
    "convert": (
        "sie_operator.controller.convert_command",
        "convert SIE model YAML to ModelConfig manifests and back",
    ),
    "crd": ("sie_operator.controller.crd_command", "print the ModelConfig CRD"),
    "store-copy": (
        "sie_operator.configsvc.storecopy_command",
        "copy a config store (directory or jetstream://NAME) into an empty one",
    ),
    "controlplane": (
        "sie_operator.devcluster.command",
        "run a local kube-apiserver + etcd for dev and tests",
    ),
}


class UsageError(Exception):
    """A configuration problem the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sie-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SIE_LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"],
        help="log level (env SIE_LOG_LEVEL; default info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level > logging.DEBUG:
        # kopf logs every handled watch event at INFO ("Handler ... succeeded"): two lines per
        # resource applied, 20,000 for 10,000, saying nothing the operator's own log does not
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        return int(args._module.run(args) or 0)
    except UsageError as exc:
        print(f"sie-operator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m sie_operator.cli` loads this file as __main__; run the imported module's main
    # so that UsageError raised by subcommands is the same class we catch
    from sie_operator.cli import main as _main

    sys.exit(_main())
