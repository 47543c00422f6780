"""One module per billing system, each behind the `Sink` interface (base.py)."""

from __future__ import annotations

from ...config import Sink as SinkConfig
from ...config import WebhookSink
from .base import Sink, SinkError

__all__ = ["Sink", "SinkError", "sink_for"]


def sink_for(config: SinkConfig) -> Sink:
    """The sink a config entry names (SPEC section 16)."""
    if isinstance(config, WebhookSink):
        from .webhook import Webhook

        return Webhook(config)
    raise ValueError(f"sink type {config.type!r} is not available in this build")
