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
