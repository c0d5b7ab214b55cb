"""Jinja templates of the cards written next to anonymized data (shipped in the wheel as hf_unsafe2safe.cards)."""
