"""keyfront: a keyed file proxy in front of object storage (see README.md and SPEC)."""

__version__ = "0.1.0"
