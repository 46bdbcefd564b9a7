"""The data's declared licence (an SPDX expression) against the base model's.

The check reads three kinds of terms from the licence ids: non-commercial
(`-NC`), no derivatives (`-ND`) and share-alike or copyleft. It warns where the
fine-tune could not honour both licences at once; it is a prompt to read the
licences, not legal advice.
"""

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from finetrace.errors import FinetraceError

COPYLEFT_PREFIXES = ("GPL-", "AGPL-", "LGPL-", "CC-BY-SA-", "CC-BY-NC-SA-", "ODbL-", "EUPL-", "MPL-")


@dataclass(frozen=True)
class LicenceCheck:
    data: str | None  # SPDX expression declared for the data; None: not declared
    base: str | None  # the base model's declared licence (SPDX where it is one)
    warnings: list[str] = field(default_factory=list)


@cache
def _licensing():
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def spdx(expression: str) -> str:
    """The canonical SPDX form of `expression`; `FinetraceError` when it is not one."""
    from license_expression import ExpressionError

    try:
        return _licensing().parse(expression, validate=True, strict=True).render()
    except ExpressionError as error:
        raise FinetraceError(
            f"licence {expression!r} is not an SPDX expression ({error}); see https://spdx.org/licenses/"
        ) from None


def _canonical(expression: str) -> str | None:
    """`spdx(expression)`, or None when it is not an SPDX expression."""
    try:
        return spdx(expression)
    except FinetraceError:
        return None


def _keys(expression: str) -> list[str]:
    return _licensing().license_keys(_licensing().parse(expression))


def base_licence(base: str | Path) -> str | None:
    """The `license` its model card declares (README.md metadata), None when it declares none
    or the card cannot be read offline."""
    from huggingface_hub import ModelCard

    card_source = Path(base) / "README.md" if Path(base).is_dir() else str(base)
    try:
        card = ModelCard.load(card_source, ignore_metadata_errors=True)
    except Exception:  # no card, no network, not a repo: all mean the licence is unknown here
        return None
    licence = card.data.license
    return (_canonical(licence) or licence) if isinstance(licence, str) else None


def check_licence(data: str | None, base: str | None) -> LicenceCheck:
    """Warnings for a fine-tune of a `base`-licensed model on `data`-licensed data."""
    warnings = []
    if data is None:
        warnings.append("no licence declared for the data: pass --licence with its SPDX id")
    if base is None:
        warnings.append("the base model declares no licence in its model card")
    elif _canonical(base) is None:
        warnings.append(f"the base model's licence {base!r} is not an SPDX licence: check its terms by hand")
    if data is None:
        return LicenceCheck(data, base, warnings)
    data = spdx(data)
    data_keys = _keys(data)
    base_keys = _keys(base) if base and _canonical(base) else []
    if any("-ND-" in key for key in data_keys):
        warnings.append(f"{data} forbids derivatives, and a fine-tune is a derivative of its data")
    if any("-NC-" in key for key in data_keys) and base_keys and not any("-NC-" in key for key in base_keys):
        warnings.append(
            f"{data} is non-commercial: the fine-tune may not be used commercially, "
            f"although the base's {base} allows it"
        )
    copyleft = [key for key in data_keys if key.startswith(COPYLEFT_PREFIXES)]
    if copyleft and base_keys and set(base_keys) != set(copyleft):
        warnings.append(
            f"{data} is share-alike: the fine-tune may have to be released under it, "
            f"which the base's {base} may not permit"
        )
    return LicenceCheck(data, base, warnings)
