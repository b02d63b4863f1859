"""taxonstream: biodiversity image URL lists to a deduplicated, embedded, searchable collection.

The folder `services/` is the `taxonstream` package: `core` is the shared plumbing, each other
subpackage is one service (fetcher, checksummer, detector, embedder, indexer) or a tool (cli, models).
"""
