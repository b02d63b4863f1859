"""Fetching: safe, polite download of image URLs, shared by the fetcher service and `taxonstream fetch`."""
