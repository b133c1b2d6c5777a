"""Export a run to the Hugging Face Hub dataset layout, write its dataset card, push it."""
