"""Built-in encoders and task heads, registered through the ``nngraph`` entry-point group."""
