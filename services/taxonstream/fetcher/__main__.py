from taxonstream.core.server import run
from taxonstream.fetcher.service import build
from taxonstream.fetching.settings import FetcherSettings

run("fetcher", FetcherSettings, build)
