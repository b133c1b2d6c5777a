"""What an export is asked to do and what it did: options checked before any file is
touched, and the result the CLI and the card report."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from avcurate.hub.licenses import License, check_license

SPLIT_BY = ("video", "id")


class ExportError(ValueError):
    """An export that cannot be made as asked (bad option, foreign folder, no rows); one line."""


@dataclass
class ExportResult:
    out: Path
    configs: dict[str, dict[str, int]]  # config -> split -> rows
    columns: list[str]
    media_copied: int
    fingerprint: str = ""  # content hash of the data files (the card names it)
    infos: list[dict[str, Any]] = field(default_factory=list)  # the card's dataset_info
    notes: list[str] = field(default_factory=list)  # what the user should know, one line each


@dataclass
class ExportOptions:
    """What an export writes besides the rows; checked before any file is touched."""

    val_fraction: float = 0.05
    split_by: str = "video"  # "video": a clip's questions all on one side; "id": each row
    max_shard_bytes: int = 500 * 1024**2
    copy_media: str | None = None  # "copy" | "hardlink"
    media_features: bool = False
    all_columns: bool = False
    license: License = field(default_factory=lambda: License("unknown"))
    pretty_name: str | None = None
    language: tuple[str, ...] = ("en",)
    repo_id: str | None = None  # where --push uploads; the card's load snippet names it

    def check(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ExportError("--val-fraction must be in [0, 1)")
        if self.split_by not in SPLIT_BY:
            raise ExportError(f"--split-by must be one of {', '.join(SPLIT_BY)}, not "
                              f"{self.split_by!r}")
        if self.copy_media not in (None, "copy", "hardlink"):
            raise ExportError("copy_media must be 'copy' or 'hardlink'")
        if self.max_shard_bytes < 1:
            raise ExportError("--shard-mb must be at least 1")
        if self.repo_id is not None and (why := repo_id_problem(self.repo_id)):
            raise ExportError(why)
        for lang in self.language:
            if not (lang.isascii() and lang.replace("-", "").isalnum() and 2 <= len(lang) <= 12):
                raise ExportError(f"--language {lang!r} is not a language code (ISO 639, "
                                  "e.g. en, zh, multilingual)")


def repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` cannot name a Hub dataset, or None. Checked before the export is
    written: huggingface_hub only rejects a malformed id once the push starts."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        return f"--repo-id {repo_id!r} must be ORG/NAME (your user name or an organisation)"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return (f"--repo-id {repo_id!r} is not a Hub repo id: ORG/NAME, each of letters, "
                "digits, '-', '_' and '.', not starting or ending with '-' or '.', no '--' "
                "or '..', at most 96 characters")
    return None


def export_options(**kwargs: Any) -> ExportOptions:
    """ExportOptions from CLI/recipe keywords (license, license_name, license_link as
    strings), validated; ExportError or LicenseError carries the one line for the user."""
    lic = check_license(kwargs.pop("license", "unknown") or "unknown",
                        kwargs.pop("license_name", None), kwargs.pop("license_link", None))
    language = kwargs.pop("language", ("en",))
    if isinstance(language, str):
        language = tuple(x.strip() for x in language.split(",") if x.strip())
    known = {f.name for f in fields(ExportOptions)}
    if unknown := sorted(set(kwargs) - known):
        raise ExportError(f"unknown export option(s): {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(known | {'license_name', 'license_link'}))})")
    opts = ExportOptions(license=lic, language=tuple(language), **kwargs)
    opts.check()
    return opts
