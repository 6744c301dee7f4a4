"""tokenizer plugins."""
