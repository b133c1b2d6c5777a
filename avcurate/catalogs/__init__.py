"""Source catalogs: annotation formats normalised into the sample table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from avcurate.catalogs.avqa import read_avqa, read_daily_omni
from avcurate.catalogs.base import MediaRoot, Reject
from avcurate.catalogs.conversations import read_llava_video, read_video_vista
from avcurate.catalogs.tabular import read_tabular


@dataclass(frozen=True)
class Catalog:
    name: str
    description: str
    reader: Callable[..., Iterator[dict | Reject]]


CATALOGS: dict[str, Catalog] = {
    c.name: c
    for c in [
        Catalog("llava-video", "LLaVA-Video-178K JSON: video + human/gpt conversations "
                "(multiple-choice and open-ended, multi-turn split per question)",
                read_llava_video),
        Catalog("video-vista", "Video-Vista JSON array of {id, video, Type, conversations}",
                read_video_vista),
        Catalog("avqa", "AVQA JSON: {id, video_name, question_text, multi_choice, answer index}",
                read_avqa),
        Catalog("daily-omni", "Daily-Omni JSON: {Question, Choice, Answer, video_id, Type}; "
                "videos at ROOT/<id>/<id>_video.mp4", read_daily_omni),
        Catalog("jsonl", "any JSON-lines file plus a column mapping (columns = {question = ...})",
                lambda p, m, **kw: read_tabular(p, m, **{"source": "jsonl"} | kw)),
        Catalog("parquet", "any Parquet file plus a column mapping (columns = {question = ...})",
                lambda p, m, **kw: read_tabular(p, m, **{"source": "parquet"} | kw)),
    ]
}


def read_source(name: str, annotations: str, media_root: str, **options: Any
                ) -> Iterator[dict | Reject]:
    """Rows and rejects of one annotation file in the format `name`."""
    if name not in CATALOGS:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(CATALOGS)}")
    return CATALOGS[name].reader(annotations, MediaRoot(media_root), **options)


__all__ = ["CATALOGS", "Catalog", "MediaRoot", "Reject", "read_source"]
