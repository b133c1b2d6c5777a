"""Policy adapters: how a row becomes model inputs, for text LMs and omni (audio-visual) LMs.

An adapter gives, per row and modality setting ("av", "video_only", "audio_only"):
the prompt token ids and the extra model inputs that go with them (none for a text
model; pixel values + grid and audio features + mask for an omni thinker), and knows
how to batch those extras. The modality-removed variants used by the
modality-attention reward come from the same adapter: an omni adapter drops the audio
or the frames; a text adapter can only say which medium is missing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from avcurate.core.answers import lettered

MODALITY_NOTES = {"av": "", "video_only": "(The audio track is not available.)\n",
                  "audio_only": "(The video frames are not available.)\n"}


def question_text(row: dict[str, Any]) -> str:
    return f"{row['question']}\n{lettered(row.get('options'))}".strip()


class TextPolicy:
    """A causal LM with a chat template."""

    batch_rollouts = True  # a step's prompts share one generate call (no media to batch)

    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", system_prompt: str = "",
                 meta: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if meta:  # the weights come from rank 0 when the model is sharded (loop.shard)
            self.model = _on_meta(AutoModelForCausalLM.from_config, model_path, dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.system_prompt = system_prompt
        self.device = torch.device(device)
        self.suppress_tokens: list[int] = []

    def prompt(self, row: dict[str, Any], modality: str = "av") -> str:
        user = f"{MODALITY_NOTES[modality]}{question_text(row)}"
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt
                    else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def inputs(self, row: dict[str, Any], modality: str, max_tokens: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = self.tokenizer(self.prompt(row, modality), add_special_tokens=False,
                             return_tensors="pt")["input_ids"][0]
        return ids[-max_tokens:], {}

    @staticmethod
    def batch_extras(extras: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {}


class OmniPolicy:
    """A Qwen2.5-Omni-style thinker: N evenly spaced frames (as images) + the audio clip + text.

    The frames go in as images and the clip as a separate audio input, so the two
    modality-removed variants are simply "no audio" and "no images". `processor` defaults
    to the model folder's AutoProcessor (which needs torchvision for its image part).
    """

    # one generate call per prompt (its G copies together): batching prompts whose frames
    # and audio differ in size is not built yet
    batch_rollouts = False

    # extras concatenated along dim 0 across samples (flattened patches, one grid row per image)
    CONCAT = ("pixel_values", "image_grid_thw")
    # extras with a leading batch dimension of 1 per sample
    STACK = ("input_features", "feature_attention_mask")

    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", system_prompt: str = "", processor=None,
                 frames: int = 8, audio_seconds: float = 10.0, meta: bool = False) -> None:
        from transformers import (
            AutoConfig,
            Qwen2_5OmniForConditionalGeneration,
            Qwen2_5OmniThinkerForConditionalGeneration,
        )

        full = AutoConfig.from_pretrained(model_path).model_type == "qwen2_5_omni"
        cls = Qwen2_5OmniForConditionalGeneration if full else \
            Qwen2_5OmniThinkerForConditionalGeneration
        if meta:  # the weights come from rank 0 when the model is sharded (loop.shard)
            model = _on_meta(cls._from_config, model_path, dtype)
        else:
            model = cls.from_pretrained(model_path, dtype=dtype).to(device)
        self.model = model.thinker if full else model  # the full model: train its thinker
        if processor is None:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(model_path)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.system_prompt, self.frames, self.audio_seconds = system_prompt, frames, audio_seconds
        self.device = torch.device(device)
        # a completion must never contain a media placeholder: it would claim features that
        # do not exist when the sequence is scored
        tok = self.tokenizer
        self.suppress_tokens = [tok.convert_tokens_to_ids(t) for t in (
            tok.image_token, tok.audio_token, tok.video_token, tok.vision_bos_token,
            tok.vision_eos_token, tok.audio_bos_token, tok.audio_eos_token)]

    def _media(self, row: dict[str, Any], modality: str):
        """Frames and audio over one window: the first `audio_seconds` of the clip (all of
        it when shorter), so what the model sees and hears happens at the same time. (The
        frames once spanned the whole clip while the audio was its first 10 s.)"""
        from avcurate.media import audio, frames

        images = list(frames(row["video"], self.frames, within=self.audio_seconds)[0]) \
            if modality != "audio_only" else []
        clip = None
        if modality != "video_only":
            clip = audio(row.get("audio") or row["video"], self.audio_seconds)
        return images, clip

    def inputs(self, row: dict[str, Any], modality: str, max_tokens: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, clip = self._media(row, modality)
        tok = self.tokenizer
        media = "".join(f"{tok.vision_bos_token}{tok.image_token}{tok.vision_eos_token}"
                        for _ in images)
        if clip is not None:
            media += f"{tok.audio_bos_token}{tok.audio_token}{tok.audio_eos_token}"
        system = f"{self.system_prompt}\n" if self.system_prompt else ""
        text = f"{system}{media}{question_text(row)}\n"
        out = self.processor(text=[text], images=images or None,
                             audio=[clip] if clip is not None else None, return_tensors="pt")
        ids = out["input_ids"][0]
        if len(ids) > max_tokens:
            raise ValueError(f"row {row.get('id', '?')} ({row['video']}): the prompt has "
                             f"{len(ids)} tokens with its media, over --max-prompt-tokens "
                             f"{max_tokens} (media tokens cannot be cut); raise it, or lower "
                             "--frames or --audio-seconds")
        return ids, {k: v for k, v in out.items() if k in self.CONCAT + self.STACK}

    @classmethod
    def batch_extras(cls, extras: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in cls.CONCAT + cls.STACK:
            parts = [e[key] for e in extras if key in e]
            if not parts:
                continue
            if key in cls.STACK and len(parts) != len(extras):
                raise ValueError("a micro-batch mixes rows with and without audio; keep "
                                 "modality-removed rollouts out of the update batch")
            batch[key] = torch.cat(parts)
        return batch


def _on_meta(build, model_path: str, dtype: torch.dtype):
    """The model's structure without its weights (meta tensors): ranks other than 0 of a
    sharded run, whose shards rank 0 sends, so host memory does not grow with the ranks.
    The folder's generation settings are loaded as `from_pretrained` would."""
    from transformers import AutoConfig, GenerationConfig

    with torch.device("meta"):
        model = build(AutoConfig.from_pretrained(model_path), dtype=dtype)
    with contextlib.suppress(OSError):  # no generation_config.json: the config's defaults
        model.generation_config = GenerationConfig.from_pretrained(model_path)
    return model


def make_policy(kind: str, model_path: str, **kw):
    if kind == "text":
        kw = {k: v for k, v in kw.items() if k in ("dtype", "device", "system_prompt", "meta")}
        return TextPolicy(model_path, **kw)
    if kind == "omni":
        return OmniPolicy(model_path, **kw)
    raise ValueError(f"unknown policy {kind!r}; use text or omni")
