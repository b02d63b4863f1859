from taxonstream.core.server import run
from taxonstream.indexer.service import IndexerSettings, build

run("indexer", IndexerSettings, build)
