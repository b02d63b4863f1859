# The browser the portal's end-to-end tests drive (tests/integration/test_portal.py): Debian's Chromium,
# launched by Playwright through executable_path. Playwright's own browser download does not work here,
# so `playwright install` is never run. Included by the main Makefile; idempotent.
CHROMIUM ?= /usr/bin/chromium

.PHONY: browser

## browser: install Debian's chromium unless it is there
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) missing after apt-get install chromium" >&2; exit 1; }
