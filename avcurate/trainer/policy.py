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
from collections.abc import Iterator
from typing import Any

import torch

from avcurate.core.answers import letterable, lettered
from avcurate.core.options import OptionError
from avcurate.trainer.clips import ClipReader
from avcurate.trainer.unusable import UnusableRow

MODALITY_NOTES = {"av": "", "video_only": "(The audio track is not available.)\n",
                  "audio_only": "(The video frames are not available.)\n"}


def question_text(row: dict[str, Any]) -> str:
    """The question and its lettered options; a row with more options than A-Z can name
    (a Parquet of the user's own, never validated) is skipped as unusable, not an
    IndexError that ended the run."""
    options = row.get("options")
    if not letterable(options):
        raise UnusableRow("too_many_options", f"row {row.get('id', '?')}: {len(options)} "
                          f"options, more than the letters A-Z name")
    return f"{row['question']}\n{lettered(options)}".strip()


class TextPolicy:
    """A causal LM with a chat template."""

    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", system_prompt: str = "",
                 meta: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.system_prompt = system_prompt
        # before the weights load: a bad template is found in seconds, not after minutes
        self.note = self._check_template()
        if meta:  # the weights come from rank 0 when the model is sharded (loop.shard)
            self.model = _on_meta(AutoModelForCausalLM.from_config, model_path, dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.context = context_of(self.model.config)
        self.device = torch.device(device)
        self.suppress_tokens: list[int] = []

    def _check_template(self) -> str | None:
        """Stop when the tokenizer has no chat template (a base model: its prompts would be
        chat turns it never saw); when the template refuses a system turn (Gemma's, some
        Mistral ones raise "System role not supported"), put the system prompt at the top
        of the user turn instead, and return a note saying so."""
        from jinja2 import TemplateError

        if not self.tokenizer.chat_template:
            raise OptionError("its tokenizer has no chat template (a base model?); the text "
                              "policy's prompts are chat turns: train an instruct model, or "
                              "add a chat_template to its tokenizer_config.json")
        self.system_turn = bool(self.system_prompt)
        try:
            self._chat("question")
            return None
        except TemplateError as exc:
            refused = exc
        self.system_turn = False
        try:
            self._chat("question")
        except TemplateError as exc:
            raise OptionError(f"its chat template cannot render a question ({exc})") from None
        return (f"note: the model's chat template takes no system turn ({refused}); the "
                "system prompt opens the user turn instead")

    def _chat(self, user: str) -> str:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_turn else []
        if self.system_prompt and not self.system_turn:
            user = f"{self.system_prompt}\n\n{user}"
        return self.tokenizer.apply_chat_template(system + [{"role": "user", "content": user}],
                                                  tokenize=False, add_generation_prompt=True)

    def prompt(self, row: dict[str, Any], modality: str = "av") -> str:
        return self._chat(f"{MODALITY_NOTES[modality]}{question_text(row)}")

    def inputs(self, row: dict[str, Any], modality: str, max_tokens: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = self.tokenizer(self.prompt(row, modality), add_special_tokens=False,
                             return_tensors="pt")["input_ids"][0]
        if len(ids) > max_tokens:  # cut from the left, it would lose the system prompt
            raise UnusableRow("prompt_too_long", f"row {row.get('id', '?')}: the prompt has "
                              f"{len(ids)} tokens, over --max-prompt-tokens {max_tokens}")
        return ids, {}

    @staticmethod
    @contextlib.contextmanager
    def rollout_media(model, medias: list[dict], group: int) -> Iterator[dict]:
        """No media to give `generate`."""
        yield {}

    @staticmethod
    def batch_extras(extras: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {}


class OmniPolicy:
    """A Qwen2.5-Omni-style thinker: the clip's frames as one video, its audio, and text.

    The frames go in as a video with its frame rate, so the thinker's time positions
    (`video_second_per_grid`) follow real time and `<time>` spans can be grounded; the
    audio is a separate input over the same window. The modality-removed variants are
    "no audio" and "no video". `processor` defaults to the model folder's AutoProcessor
    (which needs torchvision for its image and video parts).
    """

    # extras concatenated along dim 0 across samples (flattened patches, one grid row per
    # image or video, one seconds-per-temporal-patch per video)
    CONCAT = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
              "video_second_per_grid")
    # extras with a leading batch dimension of 1 per sample
    STACK = ("input_features", "feature_attention_mask")

    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", system_prompt: str = "", processor=None,
                 frames: int = 8, audio_seconds: float = 10.0, max_pixels: int = 200_704,
                 meta: bool = False, media_timeout: float | None = None) -> None:
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
        self.context = context_of(self.model.config)
        if processor is None:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(model_path)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.system_prompt, self.frames, self.audio_seconds = system_prompt, frames, audio_seconds
        self.max_pixels = max_pixels
        self.clips = ClipReader(media_timeout)  # None: decoded here (no training run)
        self.device = torch.device(device)
        # a completion must never contain a media placeholder: it would claim features that
        # do not exist when the sequence is scored
        tok = self.tokenizer
        self.suppress_tokens = [tok.convert_tokens_to_ids(t) for t in (
            tok.image_token, tok.audio_token, tok.video_token, tok.vision_bos_token,
            tok.vision_eos_token, tok.audio_bos_token, tok.audio_eos_token)]

    def _media(self, row: dict[str, Any], modality: str):
        """The video (frames [n, H, W, 3] within the pixel budget, and their frame rate) and
        the audio, over one window: the first `audio_seconds` of the clip (all of it when
        shorter), so what the model sees and hears happens at the same time. (The frames
        once spanned the whole clip while the audio was its first 10 s.)"""
        return self.clips(row["video"] if modality != "audio_only" else None,
                          row.get("audio") or row["video"] if modality != "video_only" else None,
                          self.frames, self.audio_seconds, self.max_pixels)

    def close(self) -> None:
        """Stop the clip reader's worker (if one was started)."""
        self.clips.close()

    def inputs(self, row: dict[str, Any], modality: str, max_tokens: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        video, fps, clip = self._media(row, modality)
        text = self._prompt(row, video is not None, clip is not None)
        kw = {"videos": [video], "fps": fps} if video is not None else {}
        out = self.processor(text=[text], audio=[clip] if clip is not None else None,
                             return_tensors="pt", **kw)
        ids = out["input_ids"][0]
        if len(ids) > max_tokens:
            raise UnusableRow("prompt_too_long",
                              f"row {row.get('id', '?')} ({row['video']}): the prompt has "
                              f"{len(ids)} tokens with its media, over --max-prompt-tokens "
                              f"{max_tokens} (media tokens cannot be cut); raise it, or lower "
                              "--frames, --max-pixels or --audio-seconds")
        return ids, {k: v for k, v in out.items() if k in self.CONCAT + self.STACK}

    def _prompt(self, row: dict[str, Any], video: bool, audio: bool) -> str:
        """The prompt text with one placeholder per medium, through the processor's chat
        template (system turn, user turn with the video, the audio and the question, then
        the assistant's turn opened), as the model was trained to read it. A processor
        without a template gets the plain `system\n<media>question\n` form."""
        if getattr(self.processor, "chat_template", None):
            content = ([{"type": "video"}] if video else []) + \
                ([{"type": "audio"}] if audio else []) + \
                [{"type": "text", "text": question_text(row)}]
            messages = ([{"role": "system", "content": [{"type": "text",
                                                         "text": self.system_prompt}]}]
                        if self.system_prompt else []) + [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
        tok = self.tokenizer
        media = f"{tok.vision_bos_token}{tok.video_token}{tok.vision_eos_token}" if video else ""
        if audio:
            media += f"{tok.audio_bos_token}{tok.audio_token}{tok.audio_eos_token}"
        system = f"{self.system_prompt}\n" if self.system_prompt else ""
        return f"{system}{media}{question_text(row)}\n"

    @contextlib.contextmanager
    def rollout_media(self, model, medias: list[dict], group: int) -> Iterator[dict]:
        """`generate`'s media inputs for `group` copies of each prompt (prompt 0's copies,
        then prompt 1's, ...), every prompt's media encoded once, not once per copy.

        The videos go through the vision tower in one call, and its output goes in as
        `mm_encoder_outputs` (transformers' input for encoder outputs computed beforehand).
        The thinker has no such input for audio, so the features are repeated and, while
        the context is open, hooks on the audio tower encode each run of identical
        consecutive clips once (`audio_encoded_once`). Older transformers without
        `mm_encoder_outputs` get the video repeated too. The processor pads every clip's
        features to the same 30 s, so prompts with different audio lengths stack."""
        import inspect

        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if any(m.keys() != medias[0].keys() for m in medias):
            raise ValueError("a rollout batch mixes prompts with and without audio or video")
        cached = "pixel_values_videos" in medias[0] and \
            "mm_encoder_outputs" in inspect.signature(model.forward).parameters
        extras: dict = {k: torch.cat([m[k] for m in medias for _ in range(group)])
                        for k in medias[0] if not (cached and k == "pixel_values_videos")}
        if cached:
            device = model.device
            video = model.get_video_features(
                torch.cat([m["pixel_values_videos"] for m in medias]).to(device),
                torch.cat([m["video_grid_thw"] for m in medias]).to(device), return_dict=True)
            extras["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(
                pooler_output=tuple(v for v in video.pooler_output for _ in range(group)))}
        with audio_encoded_once(model):
            yield extras

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


@contextlib.contextmanager
def audio_encoded_once(model) -> Iterator[None]:
    """While open, the model's audio tower encodes each run of identical consecutive clips
    once and repeats its output: the G copies of a prompt carry the same features, and
    the thinker's forward takes audio only as features (no encoder-output input).

    Forward hooks, not a patched method: the pre-hook keeps the first clip of each run
    (runs are found by comparing the features, so a batch without repeats runs as it
    is), the forward hook repeats each kept clip's output rows. Clips are encoded
    independently (block-diagonal attention), so the result is that of the full batch.
    A model without an audio tower, or one whose tower cannot say its output lengths,
    runs unchanged."""
    # transformers 5.24 holds the towers under `model`, 5.17 on the thinker itself
    tower = getattr(getattr(model, "model", None), "audio_tower", None)
    if tower is None:
        tower = getattr(model, "audio_tower", None)
    lengths = getattr(tower, "_get_feat_extract_output_lengths", None)
    if tower is None or lengths is None:
        yield
        return
    plan: list = []

    def before(module, args, kwargs):
        plan.clear()
        feats = args[0] if args else kwargs.get("input_features")
        lens = kwargs.get("feature_lens")
        known = {"input_features", "feature_lens", "aftercnn_lens"}
        if feats is None or lens is None or any(torch.is_tensor(v) for k, v in kwargs.items()
                                                if k not in known):
            return None  # precomputed indices or an unknown call: leave it alone
        parts = feats.split(lens.tolist(), dim=1)
        keep, counts = [0], [1]
        for i in range(1, len(parts)):
            if torch.equal(parts[i], parts[keep[-1]]):  # False for clips of other lengths
                counts[-1] += 1
            else:
                keep.append(i)
                counts.append(1)
        if len(keep) == len(parts):
            return None
        index = torch.tensor(keep, device=lens.device)
        kwargs = dict(kwargs, feature_lens=lens[index])
        if kwargs.get("aftercnn_lens") is not None:
            kwargs["aftercnn_lens"] = kwargs["aftercnn_lens"][index]
        unique = torch.cat([parts[i] for i in keep], dim=1)
        if args:
            args = (unique, *args[1:])
        else:
            kwargs["input_features"] = unique
        plan.extend([counts, lengths(lens[index])[1].tolist()])
        return args, kwargs

    def after(module, args, kwargs, output):
        if not plan:
            return None
        counts, sizes = plan
        plan.clear()
        pieces = output.last_hidden_state.split(sizes)
        output.last_hidden_state = torch.cat([p for p, n in zip(pieces, counts, strict=True)
                                              for _ in range(n)])
        return output

    handles = [tower.register_forward_pre_hook(before, with_kwargs=True),
               tower.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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


OMNI_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker")


def context_of(config) -> int | None:
    """The positions a model's text decoder has (`max_position_embeddings`, GPT-2's
    `n_positions` through its attribute map), None when its config names none."""
    text = config.get_text_config(decoder=True)
    positions = getattr(text, "max_position_embeddings", None)
    return int(positions) if isinstance(positions, int) and positions > 0 else None


def check_model(kind: str, model: str, model_path: str, max_new_tokens: int) -> None:
    """Check `--model`'s config against the options before any weights load: its kind, and
    room in its context for a completion. An unreadable config passes: loading the policy
    says why, in its own line."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return
    check_kind(kind, model, config.model_type)
    context = context_of(config)
    if context is not None and max_new_tokens >= context:
        raise OptionError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt: "
                          f"--model {model} has a context of {context:,} positions")


def context_note(model: str, context: int | None, max_new_tokens: int,
                 max_prompt_tokens: int) -> str | None:
    """A note when long prompts will be skipped for the model's context (`context_length`)
    rather than for `--max-prompt-tokens`, which would otherwise read as the limit."""
    if context is None or max_prompt_tokens + max_new_tokens <= context:
        return None
    return (f"note: --model {model} has a context of {context:,} positions, so with "
            f"--max-new-tokens {max_new_tokens} a prompt over {context - max_new_tokens:,} "
            f"tokens is skipped (context_length), below --max-prompt-tokens {max_prompt_tokens:,}")


def check_kind(kind: str, model: str, model_type: str) -> None:
    """Raise OptionError when `--policy omni` names a model that is not a Qwen2.5-Omni one.
    transformers would build an Omni thinker of its default (7B) size around the other
    model's weights, warn that the types differ, and the process ran out of memory."""
    if kind == "omni" and model_type not in OMNI_TYPES:
        raise OptionError(f"--policy omni takes a Qwen2.5-Omni model ({' or '.join(OMNI_TYPES)}); "
                          f"--model {model} is a {model_type!r} model: give --policy text, or "
                          "an Omni model")


def make_policy(kind: str, model_path: str, **kw):
    if kind == "text":
        kw = {k: v for k, v in kw.items() if k in ("dtype", "device", "system_prompt", "meta")}
        return TextPolicy(model_path, **kw)
    if kind == "omni":
        return OmniPolicy(model_path, **kw)
    raise ValueError(f"unknown policy {kind!r}; use text or omni")
