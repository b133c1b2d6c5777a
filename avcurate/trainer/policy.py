"""Policy adapters: how a row becomes model input, for text-only causal LMs.

The text adapter writes the question and lettered options into the chat
template (with the R1-style system prompt). The modality-removed variants used
by the modality-attention reward are built by the same adapter: for a text
model they only change the note on which media are available; an omni adapter
(see trainer/README.md) drops the frames or the audio instead.
"""

from __future__ import annotations

from typing import Any

import torch

MODALITY_NOTES = {"av": "", "video_only": "(The audio track is not available.)\n",
                  "audio_only": "(The video frames are not available.)\n"}


class TextPolicy:
    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", system_prompt: str = "") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.system_prompt = system_prompt
        self.device = torch.device(device)

    def prompt(self, row: dict[str, Any], modality: str = "av") -> str:
        options = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(row.get("options") or []))
        user = f"{MODALITY_NOTES[modality]}{row['question']}\n{options}".strip()
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt
                    else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def encode(self, text: str, max_tokens: int) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return ids[-max_tokens:]
