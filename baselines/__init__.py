"""Conventional methods: the RecBole adapter and trivial references (popularity, random)."""
