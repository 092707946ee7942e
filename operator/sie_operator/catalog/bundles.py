"""Bundles and routing: which bundles (worker images) can serve which adapter modules.

Routing order is priority ascending, ties broken by name, so Python and the Rust gateway
agree (SIE's Python service breaks ties by filesystem order).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from . import yamlio
from .hashing import bundles_hash
from .schema import BundleConfig, format_validation_error

log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle directory that cannot be used; ``str(exc)`` is user-facing."""


@dataclass(frozen=True)
class Bundle:
    name: str
    priority: int
    adapters: tuple[str, ...]
    default: bool = False


@dataclass
class BundleSet:
    """An immutable set of bundles with the module -> bundles index precomputed."""

    bundles: tuple[Bundle, ...] = ()
    _by_name: dict[str, Bundle] = field(init=False, repr=False)
    _module_index: dict[str, tuple[str, ...]] = field(init=False, repr=False)
    _order: dict[str, int] = field(init=False, repr=False)
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        ordered = sorted(self.bundles, key=lambda b: (b.priority, b.name))
        self.bundles = tuple(ordered)
        self._by_name = {b.name: b for b in ordered}
        self._order = {b.name: i for i, b in enumerate(ordered)}
        index: dict[str, list[str]] = {}
        for b in ordered:
            for module in b.adapters:
                index.setdefault(module, []).append(b.name)
        self._module_index = {m: tuple(dict.fromkeys(names)) for m, names in index.items()}
        self.hash = bundles_hash([(b.name, b.priority, list(b.adapters)) for b in ordered])

    def get(self, name: str) -> Bundle | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return [b.name for b in self.bundles]

    def knows_module(self, module: str) -> bool:
        return module in self._module_index

    def route(self, modules: Iterable[str]) -> tuple[str, ...]:
        """Bundles owning any of the modules, in routing order."""
        hit: set[str] = set()
        for m in modules:
            hit.update(self._module_index.get(m, ()))
        return tuple(sorted(hit, key=self._order.__getitem__))


def parse_bundle(data: object, fallback_name: str) -> Bundle:
    """Validate one bundle document; raise BundleError naming the problem."""
    if not isinstance(data, dict):
        raise BundleError(f"bundle {fallback_name!r}: expected a YAML mapping")
    try:
        cfg = BundleConfig.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"bundle {fallback_name!r}: {'; '.join(format_validation_error(exc))}") from exc
    name = cfg.name or fallback_name
    if not name or any(c.isspace() or c in "/.*>" for c in name):
        raise BundleError(f"bundle {fallback_name!r}: name {name!r} is not a valid NATS subject token")
    if name == "_all":
        raise BundleError(f"bundle {fallback_name!r}: name '_all' is reserved (the gateways' NATS subject)")
    return Bundle(name=name, priority=cfg.priority, adapters=tuple(cfg.adapters), default=cfg.default)


def load_bundle_dir(path: Path) -> BundleSet:
    """Load ``*.yaml`` bundles from a directory; any bad file is an error, not a skip.

    SIE logs and skips bad bundle files, which silently changes routing; a config service
    that starts with fewer bundles than intended is worse than one that refuses to start.
    """
    if not path.is_dir():
        raise BundleError(f"bundles directory {str(path)!r} does not exist")
    bundles: dict[str, Bundle] = {}
    for f in sorted(path.glob("*.yaml")):
        try:
            data = yamlio.load(f.read_bytes())
        except (OSError, yamlio.YamlError) as exc:
            raise BundleError(f"bundle file {f.name}: {exc}") from exc
        b = parse_bundle(data, f.stem)
        if b.name in bundles:
            raise BundleError(f"bundle file {f.name}: bundle name {b.name!r} is defined twice")
        bundles[b.name] = b
    return BundleSet(tuple(bundles.values()))


def shipped_bundles() -> BundleSet:
    """The three bundles of SIE v0.3.1, shipped inside the package."""
    root = resources.files("sie_operator.catalog") / "data" / "bundles"
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out.append(parse_bundle(yamlio.load(entry.read_bytes()), entry.name[:-5]))
    return BundleSet(tuple(out))


def shipped_bundles_dir() -> Path:
    return Path(str(resources.files("sie_operator.catalog") / "data" / "bundles"))
