"""scheduler plugins."""
