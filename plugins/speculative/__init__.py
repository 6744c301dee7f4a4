"""speculative plugins."""
