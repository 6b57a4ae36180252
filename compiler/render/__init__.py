"""Renderers: per node, a map of absolute node path -> File."""
