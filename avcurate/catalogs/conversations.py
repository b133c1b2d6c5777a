"""LLaVA-Video-178K and Video-Vista: video + a human/gpt conversation.

LLaVA-Video-178K records look like
    {"id": ..., "video": "dir/clip.mp4", "data_source": ...,
     "conversations": [{"from": "human", "value": "<image>\\nQ\\nA. ..\\nB. .."},
                       {"from": "gpt", "value": "B."}, ...]}
Video-Vista's training records are a JSON array of {"id", "video", "Type",
"conversations"} (its benchmark file is read by `video_vista.py`).
Each human turn followed by a gpt turn becomes one sample. The dataset's `id` names
the clip, not the question (a file can hold several records of one clip, and the mc
and oe files of a bucket share clips), so the id key is the record's position plus
the clip id, and `#<turn>` numbers the questions of a multi-turn record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from avcurate.catalogs.base import (
    Malformed,
    Reject,
    SourceFile,
    ident,
    load_records,
    need,
    per_record,
    positional,
    split_question_options,
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
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError("every turn needs 'from' and 'value'")
        turns.append((_text(turn["from"], k, "from").lower(), _text(turn["value"], k, "value")))
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


def _text(value: Any, k: int, key: str) -> str:
    """`text()` of a turn's field; plain ASCII text (nearly every turn) passes without
    building the field's name, which only an error message needs (~1 us a record)."""
    if type(value) is str and value.isascii() and "\x00" not in value:
        return value
    return text(value, f"conversations[{k}].{key}")


def read_conversations(src: SourceFile, meta_keys: tuple[str, ...]) -> Iterator[dict | Reject]:
    """One row per human/gpt pair of every record (see the module docstring)."""
    return per_record(src, load_records(src.path),
                      lambda n, rec: conversation_rows(src, n, rec, meta_keys))


def conversation_rows(src: SourceFile, n: int, rec: dict, meta_keys: tuple[str, ...]
                      ) -> list[dict | Reject]:
    """The rows of record `n`: one per human/gpt pair."""
    need(rec, "video", "conversations")
    clip = ident(rec["id"], "id") if rec.get("id") is not None else None
    key = positional(n, clip)
    try:
        pairs = _pairs(rec["conversations"])
    except ValueError as exc:
        if isinstance(exc, Malformed):
            raise
        return [src.reject(key, "malformed_annotation", str(exc), rec)]
    video = src.media.resolve(text(rec["video"], "video"))
    extra = {k: rec[k] for k in meta_keys if k in rec}
    rows: list[dict | Reject] = []
    for turn, (human, gpt) in enumerate(pairs):
        question, options, instruction = split_question_options(strip_placeholders(human))
        answer = normalise_answer(gpt, options) if options else gpt.strip()
        rows.append(sample_row(
            id=src.sid(key, turn if len(pairs) > 1 else None), source=src.source,
            video=video, question=question, options=options or None, answer=answer,
            meta={"source_id": clip, "record": n, "turn": turn, "video_rel": rec["video"],
                  "kind": "multiple_choice" if options else "open_ended",
                  "instruction": instruction, **extra},
        ))
    return rows


def read_llava_video(src: SourceFile) -> Iterator[dict | Reject]:
    return read_conversations(src, ("data_source",))
