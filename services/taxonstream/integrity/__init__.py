"""Integrity: checksums (sum-buddy compatible, on every core), perceptual hashes, near-duplicate index,
buddy-checks against expected checksums, and manifests.

Pure logic with no servers: the checksummer service and the `taxonstream checksum` / `dupes` commands
are both built on it.
"""
