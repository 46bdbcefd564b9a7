"""Personal data in text: e-mail addresses, phone numbers, payment card numbers,
IBANs, IP addresses and national ID numbers.

Patterns find candidates; checksums decide where the format has one (Luhn for
cards, ISO 7064 mod 97 for IBANs, the check letter of a Spanish DNI), so a
random digit run is not reported as a card. Types are matched in order and a
span shaped like an earlier type, valid or not, is not matched again: a card
number with a bad checksum is not a phone number either.
"""

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in _digits(number)][::-1]
    total = sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits))
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    compact = iban.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ip_valid(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _dni_valid(text: str) -> bool:
    return DNI_LETTERS[int(text[:8]) % 23] == text[8].upper()


def _phone_valid(text: str) -> bool:
    return 7 <= len(_digits(text)) <= 15  # E.164 allows at most 15 digits


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern
    valid: Callable[[str], bool] = lambda _: True
    needs: str = "digit"  # a cheap test (in NEEDS) that skips texts the pattern cannot match


NEEDS = {"digit": re.compile(r"\d"), "at": re.compile("@"), "digit or colon": re.compile(r"[\d:]")}


DETECTORS = (
    Detector("email", re.compile(r"\b[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), needs="at"),
    Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_valid),
    Detector("credit_card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), luhn_valid),
    Detector("us_ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")),
    Detector(
        "uk_nino",
        re.compile(
            r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
            r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
        ),
    ),
    Detector("es_dni", re.compile(r"\b\d{8}-?[A-Za-z]\b"), lambda s: _dni_valid(s.replace("-", ""))),
    Detector(
        "ip_address",
        re.compile(
            r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}"
            r"[0-9A-Fa-f]{1,4}(?![\w:])|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:"
            r"(?:[0-9A-Fa-f]{1,4})?(?![\w:])"
        ),
        _ip_valid,
        "digit or colon",
    ),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}"
            r"(?:[ .-]\d{2,4})?\b"
        ),
        _phone_valid,
    ),
)
PII_KINDS = tuple(detector.kind for detector in DETECTORS)


def find_pii(text: str) -> list[PiiMatch]:
    """Every validated match in `text`, in order of position."""
    claimed: list[tuple[PiiMatch, bool]] = []
    present = {need: pattern.search(text) is not None for need, pattern in NEEDS.items()}
    for detector in DETECTORS:
        if not present[detector.needs]:
            continue
        for match in detector.pattern.finditer(text):
            start, end = match.span()
            if not any(m.start < end and start < m.end for m, _ in claimed):
                claimed.append((PiiMatch(detector.kind, start, end), detector.valid(match.group())))
    return sorted((m for m, valid in claimed if valid), key=lambda m: m.start)


def redact(text: str, matches: list[PiiMatch]) -> str:
    """`text` with each match replaced by its kind in brackets, e.g. `[EMAIL]`."""
    pieces, cursor = [], 0
    for match in matches:
        pieces += [text[cursor : match.start], f"[{match.kind.upper()}]"]
        cursor = match.end
    return "".join(pieces) + text[cursor:]


def redacted_context(text: str, match: PiiMatch, matches: list[PiiMatch], width: int = 40) -> str:
    """The words around `match`, every PII in it redacted: an example safe to show."""
    start, end = max(0, match.start - width), min(len(text), match.end + width)
    inside = [m for m in matches if m.start >= start and m.end <= end]
    snippet = redact(text[start:end], [PiiMatch(m.kind, m.start - start, m.end - start) for m in inside])
    return ("…" if start else "") + snippet + ("…" if end < len(text) else "")
