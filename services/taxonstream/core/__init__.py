"""Shared core of the five services: settings, logging, metrics, bus, store, Triton client, server."""
