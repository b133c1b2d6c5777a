"""LLaVA-Video-178K and Video-Vista: video + a human/gpt conversation.

LLaVA-Video-178K records look like
    {"id": ..., "video": "dir/clip.mp4", "data_source": ...,
     "conversations": [{"from": "human", "value": "<image>\\nQ\\nA. ..\\nB. .."},
                       {"from": "gpt", "value": "B."}, ...]}
Video-Vista records are a JSON array of {"id", "video", "Type", "conversations"}.
Each human turn followed by a gpt turn becomes one sample; multi-turn records
get ids `<id>#<turn>` so they stay stable when the file is re-read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from avcurate.catalogs.base import (
    Malformed,
    MediaRoot,
    Reject,
    UnsafePathError,
    ident,
    load_records,
    per_record,
    split_question_options,
    stable_id,
    strip_placeholders,
    text,
)
from avcurate.core.answers import normalise_answer
from avcurate.core.schema import sample_row


def _pairs(conversations: Any) -> list[tuple[str, str]]:
    """(human, gpt) pairs of a conversation; raises ValueError when it is malformed."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list")
    turns = []
    for turn in conversations:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError("every turn needs 'from' and 'value'")
        k = len(turns)
        turns.append((text(turn["from"], f"conversations[{k}].from").lower(),
                       text(turn["value"], f"conversations[{k}].value")))
    pairs, i = [], 0
    while i < len(turns):
        who, said = turns[i]
        if who == "system":
            i += 1
            continue
        if who != "human" or i + 1 >= len(turns) or turns[i + 1][0] != "gpt":
            raise ValueError(f"turn {i} is not a human turn followed by a gpt turn")
        pairs.append((said, turns[i + 1][1]))
        i += 2
    return pairs


def read_conversations(
    path: str, media: MediaRoot, *, source: str, meta_keys: tuple[str, ...]
) -> Iterator[dict | Reject]:
    def build(n: int, rec: dict) -> list[dict | Reject]:
        raw_id = ident(rec["id"], "id") if rec.get("id") is not None else stable_id(n, rec)
        try:
            if not rec.get("video"):
                raise ValueError("record has no 'video'")
            pairs = _pairs(rec.get("conversations"))
        except ValueError as exc:
            if isinstance(exc, Malformed):
                raise
            return [Reject(source, f"{source}:{raw_id}", "malformed_annotation", str(exc), rec)]
        try:
            video = media.resolve(text(rec["video"], "video"))
        except UnsafePathError as exc:
            return [Reject(source, f"{source}:{raw_id}", "unsafe_path", str(exc), rec)]
        extra = {k: rec[k] for k in meta_keys if k in rec}
        rows: list[dict | Reject] = []
        for turn, (human, gpt) in enumerate(pairs):
            question, options, instruction = split_question_options(strip_placeholders(human))
            answer = normalise_answer(gpt, options) if options else gpt.strip()
            sid = f"{source}:{raw_id}" + (f"#{turn}" if len(pairs) > 1 else "")
            rows.append(sample_row(
                id=sid, source=source, video=video, question=question, options=options or None,
                answer=answer,
                meta={"source_id": raw_id, "turn": turn, "video_rel": rec["video"],
                      "kind": "multiple_choice" if options else "open_ended",
                      "instruction": instruction, **extra},
            ))
        return rows

    return per_record(source, load_records(path), build)


def read_llava_video(path: str, media: MediaRoot, **_: Any) -> Iterator[dict | Reject]:
    return read_conversations(path, media, source="llava-video", meta_keys=("data_source",))


def read_video_vista(path: str, media: MediaRoot, **_: Any) -> Iterator[dict | Reject]:
    return read_conversations(path, media, source="video-vista", meta_keys=("Type",))
