"""One module per billing system, each behind the `Sink` interface (base.py):
webhook.py, stripe.py, openmeter.py, lago.py."""

from __future__ import annotations

from ...config import LagoSink, OpenMeterSink, StripeSink, WebhookSink
from ...config import Sink as SinkConfig
from .base import Sink, SinkError

__all__ = ["Sink", "SinkError", "sink_for"]


def sink_for(config: SinkConfig) -> Sink:
    """The sink a config entry names (SPEC section 16)."""
    if isinstance(config, WebhookSink):
        from .webhook import Webhook

        return Webhook(config)
    if isinstance(config, StripeSink):
        from .stripe import Stripe

        return Stripe(config)
    if isinstance(config, OpenMeterSink):
        from .openmeter import OpenMeter

        return OpenMeter(config)
    if isinstance(config, LagoSink):
        from .lago import Lago

        return Lago(config)
    raise TypeError(f"unknown sink {config!r}")
