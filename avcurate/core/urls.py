"""Paths a user gives that are URLs: the local files a `file://` URL names, and a clear
refusal for the others (s3://, gs://, https://), which avcurate neither reads nor writes.

Read as paths, URLs named folders under the current one: `--media-root s3://bucket/videos`
was "media root /home/me/s3:/bucket/videos is not a folder", and `export --out
s3://bucket/x` wrote a folder `s3:` here.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# a scheme (two letters at least: "C:/" is a Windows drive), with "//" or, as Path leaves a
# URL given on the command line, one "/"
URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+")
FETCH = ("download or sync it (`hf download`, `aws s3 sync`, `gcloud storage rsync`) or "
         "mount the bucket (s3fs, gcsfuse), and give the local path")


def file_uri_path(path: str) -> str:
    """The local path a `file://` URI names (`file:///data/x.mp4`, `file://localhost/...`,
    percent-escapes decoded), as some exporters write local media; anything else as it is."""
    if path[:7].lower() != "file://":
        return path
    parts = urlsplit(path)
    return unquote(parts.path) if parts.netloc in ("", "localhost") else path


def file_path(value: str) -> str:
    """The local path a `file://` URL names; `file:/data/x` (such a URL given on the command
    line, its "//" folded by Path) names /data/x. Any other text as it is."""
    if value[:5].lower() != "file:":
        return value
    return file_uri_path(value) if value[5:7] == "//" else value[5:]


def shown_url(value: str) -> str | None:
    """`value` as the URL it is (its "//" back where Path folded it), or None for a path or
    a `file:` URL."""
    m = URL_RE.match(value)
    if m is None or m.group(1).lower() == "file":
        return None
    return f"{m.group(1)}://{value[m.end():]}"


def url_refusal(what: str, value: str, fix: str = FETCH) -> str | None:
    """The line for `what` given as a URL, or None for a local path."""
    shown = shown_url(value)
    return None if shown is None else f"{what} {shown} is a URL; avcurate reads local files: {fix}"
