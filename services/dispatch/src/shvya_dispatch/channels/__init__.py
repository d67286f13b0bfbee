"""Channel adapters behind one router: `send(to, text, channel, template_id=None)`."""

from shvya_dispatch.channels.base import Channel, SendResult
from shvya_dispatch.channels.router import ChannelRouter

__all__ = ["Channel", "ChannelRouter", "SendResult"]
