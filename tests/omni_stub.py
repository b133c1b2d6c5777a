"""A tiny Qwen2.5-Omni thinker built from a config, and a stand-in for its processor.

The real Qwen2_5OmniProcessor needs torchvision for its image part, and torchvision has no
CPU build for this machine's torch. The stand-in has the real processor's interface
(`__call__(text=, images=, audio=, return_tensors=)`, `.tokenizer`, `save_pretrained`): its
image part follows Qwen2-VL's patching (resize to multiples of 28, CLIP normalisation,
14x14 patches with a temporal pair, 2x2 merge), its audio part is the real
WhisperFeatureExtractor, and it expands the placeholder tokens the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SPECIAL = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
           "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
           "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
           "im_start_token": "<|im_start|>", "im_end_token": "<|im_end|>"}
CHARS = list("ABCD .<>/answerPickWhtcolsq?uyimgTdb\n")
# the shape of Qwen2.5-Omni's chat template (ChatML turns; a video, audio or image item
# becomes its placeholder between its begin/end tokens), written for the stand-in
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}{{ '\\n' }}"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif c.type == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif c.type == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}")
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *SPECIAL.values(),
                                         *dict.fromkeys(CHARS)])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", extra_special_tokens=SPECIAL)


def patchify(img: np.ndarray, p: int = 14, merge: int = 2, t: int = 2):
    """One image as Qwen2-VL patches: the image repeated over one temporal patch."""
    return patchify_frames([img] * t, p, merge, t)


def patchify_frames(frames, p: int = 14, merge: int = 2, t: int = 2):
    """Frames of one video (or one repeated image) as Qwen2-VL patches: resized to multiples
    of 28, normalised, pairs of frames per temporal patch (the last repeated to fill one),
    then 14x14 patches grouped 2x2 for the merger. Returns (patches, (grid_t, gh, gw))."""
    frames = list(frames) + [frames[-1]] * (-len(frames) % t)
    h, w = frames[0].shape[:2]
    H, W = max(28, h // 28 * 28), max(28, w // 28 * 28)
    rows, cols = (np.arange(H) * h / H).astype(int), (np.arange(W) * w / W).astype(int)
    x = np.stack([((np.asarray(f)[rows][:, cols].astype(np.float32) / 255.0 - MEAN) / STD)
                  .transpose(2, 0, 1) for f in frames])
    gt, gh, gw = len(frames) // t, H // p, W // p
    x = x.reshape(gt, t, 3, gh // merge, merge, p, gw // merge, merge, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 3 * t * p * p)
    return x, (gt, gh, gw)


def _mrope(head_dim: int) -> list[int]:
    """Qwen2.5-Omni's split of a head's rotary half over time, height and width (16, 24, 24
    of 64 in the real model), scaled to `head_dim`: [2, 3, 3] for the tests' 16."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


class StandInOmniProcessor:
    def __init__(self, tokenizer) -> None:
        from transformers import WhisperFeatureExtractor

        self.tokenizer = tokenizer
        self.feature_extractor = WhisperFeatureExtractor(feature_size=128)
        self.chat_template = CHAT_TEMPLATE

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=tokenize,
            add_generation_prompt=add_generation_prompt)

    def __call__(self, text, images=None, videos=None, audio=None, fps=None,
                 return_tensors="pt"):
        [prompt] = text
        out = {}
        if videos:  # as the real processor: 2 frames per temporal patch, and the seconds
            # each temporal patch spans (temporal patch size / fps) for the time positions
            patches, grids = zip(*[patchify_frames(v) for v in videos], strict=True)
            out["pixel_values_videos"] = torch.tensor(np.concatenate(patches),
                                                      dtype=torch.float32)
            out["video_grid_thw"] = torch.tensor(grids)
            out["video_second_per_grid"] = torch.tensor([2 / (fps or 2.0)] * len(videos))
            for g in grids:
                prompt = prompt.replace(SPECIAL["video_token"],
                                        "<|VID_DONE|>" * (int(np.prod(g)) // 4), 1)
            prompt = prompt.replace("<|VID_DONE|>", SPECIAL["video_token"])
        if images:
            patches, grids = zip(*[patchify(np.asarray(im)) for im in images], strict=True)
            out["pixel_values"] = torch.tensor(np.concatenate(patches), dtype=torch.float32)
            out["image_grid_thw"] = torch.tensor(grids)
            for g in grids:  # each image placeholder becomes one token per merged patch
                n = int(np.prod(g)) // 4
                prompt = prompt.replace(SPECIAL["image_token"], "<|IMG_DONE|>" * n, 1)
            prompt = prompt.replace("<|IMG_DONE|>", SPECIAL["image_token"])
        if audio:
            feats = self.feature_extractor(audio[0], sampling_rate=16000,
                                           return_attention_mask=True, return_tensors="pt")
            out["input_features"] = feats["input_features"]
            out["feature_attention_mask"] = feats["attention_mask"]
            length = (int(feats["attention_mask"].sum()) - 1) // 2 + 1
            prompt = prompt.replace(SPECIAL["audio_token"],
                                    SPECIAL["audio_token"] * ((length - 2) // 2 + 1), 1)
        ids = self.tokenizer(prompt, return_tensors="pt")
        return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], **out}

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)


def make_tiny_thinker(folder: Path, hidden: int = 64, layers: int = 1
                      ) -> tuple[Path, StandInOmniProcessor]:
    """The thinker: `layers` blocks of width `hidden` in each tower (the tests keep 1 x 64;
    the omni rollout benchmark asks for more so the model's work shows)."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    tok = make_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in SPECIAL.items()}
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"type": "default",
                                       "mrope_section": _mrope(hidden // 4)}),
        vision_config=dict(depth=layers, hidden_size=hidden // 2, intermediate_size=hidden,
                           num_heads=2, out_hidden_size=hidden, fullatt_block_indexes=[0]),
        audio_config=dict(d_model=hidden // 2, encoder_layers=layers, encoder_attention_heads=2,
                          encoder_ffn_dim=hidden, num_mel_bins=128, output_dim=hidden),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2_5OmniThinkerForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, StandInOmniProcessor(tok)
