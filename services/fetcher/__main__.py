from taxonstream.core.server import run
from taxonstream.fetcher.service import build
from taxonstream.fetcher.settings import FetcherSettings

run("fetcher", FetcherSettings, build)
