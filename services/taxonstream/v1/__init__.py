"""Generated from protos/taxonstream/v1 by tools/gen_protos.py; do not edit."""
