"""`python -m proxy.keylookup > docs/key-api.schema.json`: the key API's answer schema."""

from __future__ import annotations

import json

from .answer import answer_schema

print(json.dumps(answer_schema(), indent=2))
