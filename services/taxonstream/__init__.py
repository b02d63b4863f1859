"""taxonstream: biodiversity image URL lists to a deduplicated, embedded, searchable collection.

`services/` is the source root: the module `taxonstream.core.bus` is the file `services/taxonstream/core/bus.py`.
Rooms: `core` (shared plumbing), the five services (fetcher, checksummer, detector, embedder, indexer: a
servicer, a worker and an entry point each), the libraries they share (fetching, integrity, index, models,
classify, evaluation, export) and the `cli`. docs/architecture.md has the map and the import rule.
"""
