"""proxy/listener.py's pure parts; its behaviour with real clients is in
test_e2e_listener.py."""

from __future__ import annotations

import pytest

from proxy.listener import FD_RESERVE, connection_cap


@pytest.mark.parametrize(
    ("configured", "open_files", "cap"),
    [
        (10_000, 1_048_576, 10_000),  # a container's usual limit: as configured
        (10_000, 20_000, 10_000),
        (10_000, 10_000, 10_000 - FD_RESERVE),  # the reserve stays free
        (10_000, 1_024, 512),  # a small limit: half of it for clients
        (100, 1_024, 100),
    ],
)
def test_the_cap_leaves_descriptors_for_serving(configured: int, open_files: int, cap: int) -> None:
    assert connection_cap(configured, open_files) == cap
