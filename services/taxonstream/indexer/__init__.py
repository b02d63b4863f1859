"""Indexer: holds the searchable vector index, durable through S3 snapshots plus Kafka replay."""
