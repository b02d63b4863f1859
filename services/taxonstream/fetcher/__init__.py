"""Fetcher: turns submitted URL lists into stored, validated originals, and tracks every job."""
