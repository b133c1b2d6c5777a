"""Video-MME: `videomme/test-00000-of-00001.parquet` (or the same records as JSON).

Rows are {"video_id": "001", "duration": "short", "domain", "sub_category", "url",
"videoID": "fFjv93ACGo8", "question_id": "001-1", "task_type", "question",
"options": ["A. ...", "B. ...", ...], "answer": "C"}. Videos are `<videoID>.mp4`, in the
media root or the `data/`, `video/` or `videos/` folder the release unpacks into.
"""

from __future__ import annotations

from collections.abc import Iterator

from avcurate.catalogs.base import (
    Reject,
    SourceFile,
    choices,
    ident,
    need,
    own_key,
    per_record,
    records_of,
    text,
)
from avcurate.core.schema import sample_row

META = ("video_id", "duration", "domain", "sub_category", "task_type", "url", "videoID")
FOLDERS = ("", "data/", "video/", "videos/")


def read_video_mme(src: SourceFile) -> Iterator[dict | Reject]:
    def build(n: int, rec: dict) -> dict:
        need(rec, "videoID", "question", "options", *src.answer_fields("answer"))
        key = own_key(rec, "question_id", n)
        vid = ident(rec["videoID"], "videoID")
        options = choices(rec["options"], "options")
        return sample_row(
            id=src.sid(key), source=src.source,
            video=src.media.first([f"{folder}{vid}.mp4" for folder in FOLDERS]),
            question=text(rec["question"], "question"), options=options,
            answer=src.answer(rec.get("answer"), "answer", options),
            meta={"source_id": key, "kind": "multiple_choice",
                  **{k: rec[k] for k in META if k in rec}},
        )

    return per_record(src, records_of(src.path), build,
                      lambda n, rec: own_key(rec, "question_id", n))
