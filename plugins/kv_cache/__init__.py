"""kv_cache plugins."""
