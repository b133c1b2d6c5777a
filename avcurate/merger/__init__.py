"""The text-only LLM merger (AVRT) and the validation of the traces it writes."""
