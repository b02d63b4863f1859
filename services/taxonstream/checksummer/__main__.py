from taxonstream.checksummer.service import ChecksummerSettings, build
from taxonstream.core.server import run

run("checksummer", ChecksummerSettings, build)
