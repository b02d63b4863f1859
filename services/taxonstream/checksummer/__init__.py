"""Checksummer: verifies stored originals, and makes every set of identical bytes one image."""
