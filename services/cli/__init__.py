"""The `taxonstream` command line."""
