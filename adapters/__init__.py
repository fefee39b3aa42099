"""Built-in adapters: each sub-package is a plugin registered in the ``nngraph`` entry-point group."""
