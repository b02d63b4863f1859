from taxonstream.core.server import run
from taxonstream.embedder.service import EmbedderSettings, build

run("embedder", EmbedderSettings, build)
