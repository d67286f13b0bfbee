"""What the WhatsApp Web adapter still needs from WhatsApp Web's page itself: its URL, the
browser identity it presents, and the one control wa-js has no call for.

Connection state, number lookup, sending and its acknowledgement, incoming messages and the
login codes all come from WhatsApp Web's own modules through wa-js (`wa_bridge`), so nothing
here decides whether a send worked. When WhatsApp changes its markup only `USE_HERE_BUTTON`
can break, and then only the take-back of a session opened in another browser.
"""

from __future__ import annotations


def home_url(base: str) -> str:
    """The app itself: the chat list when linked, the login screen when not."""
    return base.rstrip("/") + "/"


# "WhatsApp is open in another window. Click 'Use here' to use WhatsApp in this window."
# Current markup first, older forms after.
USE_HERE_BUTTON = (
    'div[data-animate-modal-popup="true"] button:has-text("Use here"), '
    'div[role="dialog"] button:has-text("Use here")'
)

BROWSER_LOCALE = "en-US"
# Headless Chromium says "HeadlessChrome" in its user agent, which WhatsApp Web turns away with an
# "update your browser" page; present the desktop Chrome of the same version instead.
USER_AGENT_TEMPLATE = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{version} Safari/537.36"
)
