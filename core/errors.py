"""Errors that carry the CLI exit code they map to.

Exit codes: 0 ok, 1 failure, 2 usage, 3 plugin problem, 4 unsupported or corrupt input.
"""
from __future__ import annotations


class NNGraphError(Exception):
    """Base class: a one-line, user-facing message and the exit code the CLI uses."""

    exit_code = 1


class GraphError(NNGraphError):
    """A neural graph is internally inconsistent (bad shapes, dangling references, broken ties)."""

    exit_code = 1


class PluginError(NNGraphError):
    """A plugin is missing, failed to load, or misbehaved."""

    exit_code = 3


class InputError(NNGraphError):
    """The input file is missing, unreadable, corrupt, hostile, or of an unsupported kind."""

    exit_code = 4


class UnsupportedModelError(InputError):
    """The model is readable but uses constructs no loaded rule handles.

    ``unsupported`` maps an op type (or construct) to the nodes that use it, so the message
    names every one of them at once instead of failing on the first.
    """

    def __init__(self, message: str, unsupported: dict[str, list[str]] | None = None):
        self.unsupported = dict(unsupported or {})
        if self.unsupported:
            parts = [f"{op} ({', '.join(nodes[:5])}{' …' if len(nodes) > 5 else ''})"
                     for op, nodes in sorted(self.unsupported.items())]
            message = f"{message}: {'; '.join(parts)}"
        super().__init__(message)


class UsageError(NNGraphError):
    """Options that do not fit together (e.g. activation matching without data): exit 2, like
    the command-line parser's own usage errors."""

    exit_code = 2


#: Modules nngraph imports lazily → the extra that installs them.
EXTRAS = {"torch": "learn", "torch_geometric": "learn", "scipy": "learn", "onnxscript": "torch",
          "sklearn": "learn", "tensorflow": "keras", "keras": "keras", "tf2onnx": "keras",
          "transformers": "test"}


class MissingExtraError(PluginError):
    """An optional dependency is not installed: names the ``pip install "nngraph[extra]"`` that fixes it."""

    def __init__(self, module: str, extra: str | None = None):
        self.module, self.extra = module, extra or EXTRAS.get(module, "learn")
        super().__init__(f"this needs {module}, which is not installed: pip install \"nngraph[{self.extra}]\"")


def missing_extra(exc: BaseException) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for an ``ImportError`` of a module an extra provides, else None."""
    name = getattr(exc, "name", None) or ""
    top = name.split(".")[0]
    if isinstance(exc, ImportError) and top in EXTRAS:
        return MissingExtraError(top)
    return None
