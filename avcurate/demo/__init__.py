"""The demo: synthetic clips in three annotation formats (`data`), a demo model that
answers avcurate's prompts from what it perceives in them (`model`, `perception`), served
over the OpenAI wire format (`server`), and the tour that runs every stage (`tour`)."""

from avcurate.demo.data import make_demo

__all__ = ["make_demo"]
