"""Discover and load plugins from the ``nngraph`` entry-point group.

Entry points are loaded by hand (not ``pluggy.load_setuptools_entrypoints``) so that one
plugin that fails to import, registers an unknown hook, raises in a hook or returns the wrong
thing is reported with its error and skipped — it never takes the CLI down.

Environment:
  ``NNGRAPH_DISABLE_PLUGINS``  comma-separated entry-point names to block (``*`` blocks all)
  ``NNGRAPH_LOAD_PLUGINS``     comma-separated names: load only these
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import EXTRAS, PluginError
from .hookspecs import HOOKS, PROJECT, Contributions


@dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    value: str
    status: str = "active"           # active | failed | blocked | needs-extra (loaded, dependencies missing)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Registry:
    """Everything the loaded plugins provide, keyed by name, plus a report per plugin."""

    plugins: list[PluginInfo]
    adapters: dict[str, hookspecs.AdapterSpec]
    onnx_rules: list[hookspecs.OpRule]
    encoders: dict[str, hookspecs.EncoderSpec]
    heads: dict[str, hookspecs.HeadSpec]
    commands: dict[str, hookspecs.CommandSpec]

    def plugin(self, name: str) -> PluginInfo | None:
        return next((p for p in self.plugins if p.name == name), None)

    def adapter(self, name: str) -> hookspecs.AdapterSpec:
        return self._get("adapter", self.adapters, name)

    def encoder(self, name: str) -> hookspecs.EncoderSpec:
        return self._get("encoder", self.encoders, name)

    def head(self, name: str) -> hookspecs.HeadSpec:
        return self._get("head", self.heads, name)

    def _get(self, what: str, table: dict, name: str):
        if name in table:
            return table[name]
        info = self.plugin(name)
        if info is not None and info.status != "active":
            detail = f": {info.error}" if info.error else ""
            raise PluginError(f"{what} {name!r}: plugin {info.name!r} is {info.status}{detail}")
        known = ", ".join(sorted(table)) or "none"
        raise PluginError(f"no {what} named {name!r} (available: {known}); see `ngraph plugins`")


def _names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _blocked(name: str) -> bool:
    disabled, only = _names("NNGRAPH_DISABLE_PLUGINS"), _names("NNGRAPH_LOAD_PLUGINS")
    if disabled and ("*" in disabled or "all" in disabled or name in disabled):
        return not (only and name in only)
    return only is not None and name not in only


def _entry_points() -> list[EntryPoint]:
    seen: dict[str, EntryPoint] = {}
    for ep in entry_points(group=PROJECT):
        seen.setdefault(ep.name, ep)   # first on sys.path wins, like imports do
    return list(seen.values())


#: What the built-in plugins import lazily (third parties may set ``NNGRAPH_REQUIRES`` on their module).
BUILTIN_REQUIRES = {"nngraph.adapters.torch": ["torch", "onnxscript"],
                    "nngraph.adapters.keras": ["tensorflow", "keras", "tf2onnx"],
                    "nngraph.plugins.encoders": ["torch", "torch_geometric"],
                    "nngraph.plugins.heads": ["torch"]}


def missing_modules(modules) -> list[str]:
    """The modules of ``modules`` that are not installed (found without importing them)."""
    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except (ImportError, ValueError):
            out.append(m)
    return out


def _needs(info: PluginInfo, obj: object) -> str | None:
    """'needs torch: pip install "nngraph[learn]"' for a plugin whose dependencies are missing."""
    required = getattr(obj, "NNGRAPH_REQUIRES", None) or BUILTIN_REQUIRES.get(info.value.split(":")[0], [])
    missing = missing_modules(required)
    if not missing:
        return None
    extras = sorted({EXTRAS[m] for m in missing if m in EXTRAS})
    how = f': pip install "nngraph[{",".join(extras)}]"' if info.package == PROJECT and extras else ""
    return f"needs {', '.join(missing)}{how}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]


def load_registry() -> Registry:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    got: dict[str, Contributions] = {}
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?", ep.value)
        infos.append(info)
        if _blocked(ep.name):
            info.status = "blocked"
            continue
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
            unknown = [impl.function.__name__ for caller in pm.get_hookcallers(obj) or []
                       for impl in caller.get_hookimpls() if impl.plugin is obj and caller.spec is None]
            if unknown:
                pm.unregister(obj)
                raise PluginError(f"implements unknown hook(s) {', '.join(sorted(set(unknown)))}")
            got[ep.name] = _collect(pm, obj)
            needs = _needs(info, obj)
            if needs:                 # still registered: using it says which extra to install
                info.status, info.error = "needs-extra", needs
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            info.status, info.error = ("needs-extra", f'needs {top}: pip install "nngraph[{EXTRAS[top]}]"') \
                if top in EXTRAS else ("failed", _describe(exc))
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal
            info.status, info.error = "failed", _describe(exc)

    reg = Registry(infos, {}, [], {}, {}, {})
    # built-ins claim their names first: a third party cannot shadow "onnx" by sorting earlier
    for info in sorted(infos, key=lambda i: i.package != PROJECT):
        if info.status not in ("active", "needs-extra") or info.name not in got:
            continue
        c = got[info.name]
        clash = ([a.name for a in c.adapters if a.name in reg.adapters]
                 + [e.name for e in c.encoders if e.name in reg.encoders]
                 + [h.name for h in c.heads if h.name in reg.heads]
                 + [m.name for m in c.commands if m.name in reg.commands])
        if clash:
            info.status, info.error = "failed", f"provides names already taken: {', '.join(clash)}"
            continue
        reg.adapters.update({a.name: a for a in c.adapters})
        reg.onnx_rules.extend(c.onnx_rules)
        reg.encoders.update({e.name: e for e in c.encoders})
        reg.heads.update({h.name: h for h in c.heads})
        reg.commands.update({m.name: m for m in c.commands})
        info.provides = {k: v for k, v in {
            "adapters": [a.name for a in c.adapters],
            "onnx_rules": [f"{r.domain or 'ai.onnx'}::{r.op_type}" for r in c.onnx_rules],
            "encoders": [e.name for e in c.encoders], "heads": [h.name for h in c.heads],
            "commands": [m.name for m in c.commands]}.items() if v}
    return reg


def _collect(pm: pluggy.PluginManager, plugin: object) -> Contributions:
    """Call each hook implemented by one plugin and type-check what it returns."""
    c = Contributions()
    for hook_name, (attr, kind) in HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            result = impl.function() or []
            if not isinstance(result, (list, tuple)) or not all(isinstance(r, kind) for r in result):
                raise PluginError(f"{hook_name}() must return a list of {kind.__name__}")
            getattr(c, attr).extend(result)
    return c


_REGISTRY: Registry | None = None


def registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = load_registry()
    return _REGISTRY

