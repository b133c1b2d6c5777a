"""A toy reward for the trainer tests: pays for answering B straight away."""


def starts_with_b(completions, rows):
    return [1.0 if c.strip()[:1] == "B" else 0.0 for c in completions]
