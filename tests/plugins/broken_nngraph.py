"""A plugin that fails to import: it must be reported and skipped, never fatal."""
raise ImportError("this plugin is broken on purpose")
