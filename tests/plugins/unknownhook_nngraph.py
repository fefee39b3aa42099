"""A plugin that implements a hook nngraph does not define."""
from nngraph.hookspecs import hookimpl


@hookimpl
def nngraph_no_such_hook():
    return []
