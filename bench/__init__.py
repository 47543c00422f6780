"""keyfront's benchmark against nginx (SPEC section 12): `make bench`, `python -m bench.run`."""
