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
           "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
CHARS = list("ABCD .<>/answerPickWhtcolsq?")
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
    h, w = img.shape[:2]
    H, W = max(28, h // 28 * 28), max(28, w // 28 * 28)
    x = img[(np.arange(H) * h / H).astype(int)][:, (np.arange(W) * w / W).astype(int)]
    x = ((x.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    x = np.tile(x[None], (t, 1, 1, 1))
    gh, gw = H // p, W // p
    x = x.reshape(1, t, 3, gh // merge, merge, p, gw // merge, merge, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, 3 * t * p * p)
    return x, (1, gh, gw)


class StandInOmniProcessor:
    def __init__(self, tokenizer) -> None:
        from transformers import WhisperFeatureExtractor

        self.tokenizer = tokenizer
        self.feature_extractor = WhisperFeatureExtractor(feature_size=128)

    def __call__(self, text, images=None, audio=None, return_tensors="pt"):
        [prompt] = text
        out = {}
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


def make_tiny_thinker(folder: Path) -> tuple[Path, StandInOmniProcessor]:
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    tok = make_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in SPECIAL.items()}
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"type": "default", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, fullatt_block_indexes=[0]),
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                          encoder_ffn_dim=64, num_mel_bins=128, output_dim=64),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2_5OmniThinkerForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, StandInOmniProcessor(tok)
