"""Everything the WhatsApp Web adapter knows about WhatsApp Web's page: URLs, CSS selectors, the
texts it matches and the browser identity it presents.

WhatsApp Web changes its markup without notice. When a send or the login command stops finding
something, this module is the one file to fix; the tests' fake WhatsApp Web implements exactly
this contract, so they keep proving the adapter's logic against it.

Each selector is a CSS selector list: the first alternative is the current markup, the later ones
are older markup kept while WhatsApp rolls changes out gradually.
"""

from __future__ import annotations

import re

# --- URLs ---------------------------------------------------------------------------------------


def home_url(base: str) -> str:
    """The app itself: the chat list when logged in, the QR login screen when not."""
    return base.rstrip("/") + "/"


def send_url(base: str, digits: str) -> str:
    """Opens the chat with an international number (digits only, no + or spaces)."""
    return f"{base.rstrip('/')}/send?phone={digits}"


# --- Logged in or not ---------------------------------------------------------------------------

# The chat list pane, present whenever the session is logged in.
LOGGED_IN = '#pane-side, div[aria-label="Chat list"]'
# The login screen's QR code; its container's `data-ref` changes each time the QR refreshes.
QR_CODE = 'canvas[aria-label="Scan me!"], div[data-ref] canvas'
QR_CONTAINER = "div[data-ref]"
QR_REF_ATTRIBUTE = "data-ref"

# --- A chat -------------------------------------------------------------------------------------

# The message box at the bottom of an open chat.
COMPOSE_BOX = (
    'footer div[contenteditable="true"][role="textbox"], '
    'footer div[contenteditable="true"][data-tab="10"]'
)
SEND_BUTTON = (
    'footer button[aria-label="Send"], footer span[data-icon="wds-ic-send-filled"], '
    'footer span[data-icon="send"]'
)
# One outgoing message bubble; the element (or an ancestor) carrying MESSAGE_ID_ATTRIBUTE holds
# WhatsApp's own id for it, e.g. "true_919812345678@c.us_3EB0C4F5...".
OUTGOING_MESSAGE = "div.message-out"
MESSAGE_ID_ATTRIBUTE = "data-id"

# --- Popups -------------------------------------------------------------------------------------

# WhatsApp Web's modal popups ("Starting chat", "Phone number shared via url is invalid.").
POPUP = 'div[data-animate-modal-popup="true"]'
# The popup shown when the number has no WhatsApp account. The UI language follows the browser
# locale, which the adapter pins to BROWSER_LOCALE so this English text matches.
INVALID_PHONE_TEXT = re.compile(r"phone number shared via url is invalid", re.IGNORECASE)

# --- Browser identity ---------------------------------------------------------------------------

BROWSER_LOCALE = "en-US"
# Headless Chromium says "HeadlessChrome" in its user agent, which WhatsApp Web turns away with an
# "update your browser" page; present the desktop Chrome of the same version instead.
USER_AGENT_TEMPLATE = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{version} Safari/537.36"
)
