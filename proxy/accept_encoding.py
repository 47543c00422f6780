"""`Accept-Encoding` negotiation (RFC 9110 section 12.5.3) over the configured codings.
A leaf: it imports nothing of keyfront.

    Negotiator(offered).choose(header)  -> "br" | "zstd" | "gzip" | IDENTITY

    Accept-Encoding = #( codings [ weight ] )      codings = content-coding / "identity" / "*"
    weight = OWS ";" OWS "q=" qvalue               qvalue = 0[.ddd] / 1[.000]

- Codings are case-insensitive; `x-gzip` is gzip (RFC 9110 8.4.1.3).
- The highest q wins; equal q: the configured order (`compression.encodings`) breaks
  the tie, so `gzip, br` gets br when br is configured first, as browsers expect.
- `*` stands for every offered coding the header does not name.
- q=0 refuses a coding. A malformed element (bad q, junk) is skipped: a coding the
  client did not clearly accept is never sent.
- identity is the answer when no offered coding has q > 0, or when the header names
  identity with a higher q than the best coding. It is sent even when the header
  refuses it (`identity;q=0` with nothing else acceptable): RFC 9110 12.5.3 lets a
  server send an unencoded response then, as nginx and CDNs do; a 406 for an image
  would break the page that embeds it.
- No header, an empty one, or one over LONGEST_HEADER characters: identity.

Untrusted text (README "Security model"): the length is capped before any work, and
the parse is splits and strips, linear in the header. Browsers send a handful of
distinct values, so answers are memoised by header string in a bounded dict: a
repeated header costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Iterable

IDENTITY = "identity"
LONGEST_HEADER = 512  # browsers send ~25 characters ("gzip, deflate, br, zstd")
MEMO_SIZE = 256  # distinct headers remembered, per Negotiator; then forgotten at once
_ALIASES = {"x-gzip": "gzip"}


class Negotiator:
    """Chooses among `offered` codings (in preference order) for a header value."""

    __slots__ = ("_memo", "_offered")

    def __init__(self, offered: Iterable[str]) -> None:
        self._offered = tuple(offered)
        self._memo: dict[str, str] = {}

    def choose(self, header: str | None) -> str:
        """The coding to send for this `Accept-Encoding` value; IDENTITY for none."""
        if not header:
            return IDENTITY
        chosen = self._memo.get(header)
        if chosen is None:
            chosen = choose(header, self._offered)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()  # bounded: a flood of distinct values costs a parse each
            self._memo[header] = chosen
        return chosen


def choose(header: str, offered: tuple[str, ...]) -> str:
    """The coding of `offered` (preference order) that `header` prefers; see the module
    docstring."""
    weights = parse(header)
    if not weights:
        return IDENTITY
    default = weights.get("*", 0.0)
    best, best_q = IDENTITY, 0.0
    for coding in offered:  # in order: a later coding must beat the q, not tie it
        q = weights.get(coding, default)
        if q > best_q:
            best, best_q = coding, q
    if IDENTITY in weights and weights[IDENTITY] > best_q:
        return IDENTITY
    return best


def parse(header: str) -> dict[str, float]:
    """The q of each coding `header` names (lowercase), malformed elements skipped; {}
    for a header over LONGEST_HEADER characters. Linear: splits and strips only."""
    if len(header) > LONGEST_HEADER:
        return {}
    weights: dict[str, float] = {}
    for element in header.lower().split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip(" \t")
        if not coding or not _token(coding):
            continue
        q = _weight(params) if params else 1.0
        if q is None:
            continue
        coding = _ALIASES.get(coding, coding)
        weights[coding] = max(q, weights.get(coding, 0.0))
    return weights


def _weight(params: str) -> float | None:
    """The q of `;`-separated parameters (`q=0.5`); None if malformed."""
    q: float | None = 1.0
    for param in params.split(";"):
        name, equals, value = param.strip(" \t").partition("=")
        if name.rstrip(" \t") != "q" or not equals:
            return None  # Accept-Encoding takes no other parameter
        q = _qvalue(value.strip(" \t"))
        if q is None:
            return None
    return q


def _qvalue(text: str) -> float | None:
    """RFC 9110 12.4.2: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]."""
    whole, _, fraction = text.partition(".")
    if whole not in ("0", "1") or len(fraction) > 3:
        return None
    if fraction and not (fraction.isascii() and fraction.isdigit()):
        return None
    if whole == "1":
        return 1.0 if fraction.strip("0") == "" else None
    return float(f"0.{fraction}") if fraction else 0.0


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _token(text: str) -> bool:
    return all(c in _TCHAR for c in text)
