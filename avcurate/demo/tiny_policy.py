"""A tiny causal LM with a character tokenizer, built from a config (no download).

The demo's `--train` and the trainer's tests need a policy that really generates and
learns but costs nothing to make: a 2-layer Llama over single characters. It knows no
language, so its answers are noise at first; the demo shows the loop, not a result.
"""

from __future__ import annotations

import string
from pathlib import Path

TEMPLATE = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}>{% endif %}")
PRINTABLE = [c for c in string.printable if c not in "\x0b\x0c\r"]


def make_tiny_policy(folder: Path, *, chars: list[str] | None = None, layers: int = 2,
                     hidden: int = 64, seed: int = 0, max_positions: int = 4096) -> Path:
    """Write tokenizer, config and random weights to `folder`; returns it."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *(chars or PRINTABLE)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
                         pad_token_id=3, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def first_letter(completions: list[str], rows: list[dict]) -> list[float]:
    """The demo's shaping reward: 1 when a completion starts with the right option letter.

    A random tiny policy almost never writes a whole `<answer>X</answer>`, so the accuracy
    reward alone is 0 for every sample and the demo's loss would be 0; this one pays often
    enough at random for GSPO's group advantages (and the metrics) to move.
    """
    return [1.0 if c.strip()[:1] == r["answer"] else 0.0 for c, r in zip(completions, rows,
                                                                           strict=True)]
