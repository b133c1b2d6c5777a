"""License ids a dataset card may declare, checked before anything is written.

The Hub accepts only the identifiers on its own list (https://huggingface.co/docs/hub/
repositories-licenses), lower-case; its YAML validator rejects the rest. The list is
copied here because neither `huggingface_hub` nor `datasets` ships it. A valid SPDX id
the Hub does not list is declared as `other` with a name and a link, the Hub's own way.
"""

from __future__ import annotations

from dataclasses import dataclass

HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0",
    "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0",
    "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl",
    "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by",
    "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib",
    "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2",
    "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
})


class LicenseError(ValueError):
    """A license the card cannot declare; one line saying what to pass instead."""


@dataclass(frozen=True)
class License:
    id: str
    name: str | None = None  # only with `other`
    link: str | None = None

    def card_fields(self) -> dict[str, str]:
        """The card's YAML keys for this license (license_name/license_link with `other`)."""
        fields = {"license": self.id}
        if self.name:
            fields["license_name"] = self.name
        if self.link:
            fields["license_link"] = self.link
        return fields


def _spdx_hint(value: str) -> str:
    try:
        from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
    except ImportError:  # packaging < 24.2: no SPDX table to check against
        return ""
    try:
        spdx = canonicalize_license_expression(value)
    except InvalidLicenseExpression:
        return ""
    return (f" ({spdx} is a valid SPDX id the Hub does not list: pass --license other "
            f"--license-name {spdx.lower()} --license-link URL)")


def check_license(value: str, name: str | None = None, link: str | None = None) -> License:
    """The license to declare, or a LicenseError naming the fix.

    Case is folded (`CC-BY-4.0` is the Hub's `cc-by-4.0`). `other` needs a name (a short
    slug the Hub shows) and a link to the terms; a name or link with any other id is an
    error, because the Hub would ignore it.
    """
    lid = value.strip().lower()
    if lid not in HUB_LICENSES:
        raise LicenseError(f"--license {value!r} is not a Hub license id (e.g. cc-by-4.0, "
                           f"apache-2.0, mit, other){_spdx_hint(value)}")
    if lid == "other":
        if not name or not link:
            raise LicenseError("--license other needs --license-name (a short slug, e.g. "
                               "llava-video-terms) and --license-link (a URL to the terms)")
        if not name.replace("-", "").replace(".", "").isalnum() or name != name.lower():
            raise LicenseError(f"--license-name {name!r} must be a lower-case slug (letters, "
                               "digits, '-' and '.'), e.g. llava-video-terms")
        if not link.startswith(("https://", "http://")) and not link.startswith("LICENSE"):
            raise LicenseError(f"--license-link {link!r} must be a URL or a file in the "
                               "export such as LICENSE.md")
        return License(lid, name, link)
    if name or link:
        raise LicenseError("--license-name and --license-link go with --license other only")
    return License(lid)
