"""A toy reward for the trainer tests: pays for answering B straight away."""


def starts_with_b(completions, rows):
    return [1.0 if c.strip()[:1] == "B" else 0.0 for c in completions]


def first_char_code(completions, rows):
    """Varies with almost every sample, so no group has zero advantage (a test of plumbing)."""
    return [ord(c.strip()[:1] or " ") / 128 for c in completions]


def flat_on_odd_rows(completions, rows):
    """No signal for odd-numbered rows (every completion 0), a varied one for the others:
    dynamic sampling must replace exactly the odd rows' groups."""
    varied = first_char_code(completions, rows)
    return [0.0 if int(r["id"][1:]) % 2 else v for v, r in zip(varied, rows, strict=True)]


def none_for_long(completions, rows):
    """A custom reward that cannot score some completions and says None (a user's mistake)."""
    return [None if len(c) > 3 else 1.0 for c in completions]
