from taxonstream.core.server import run
from taxonstream.detector.service import DetectorSettings, build

run("detector", DetectorSettings, build)
