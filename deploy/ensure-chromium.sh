#!/usr/bin/env bash
# WhatsApp Web tests drive Debian's Chromium (Playwright's own browser download cannot work on
# machines without general internet). Install it when it is missing and we are allowed to.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the WhatsApp Web tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is missing and cannot be installed here (need root and apt-get);" \
       "install it or set WHATSAPP_WEB_CHROMIUM_PATH" >&2
  exit 1
fi
