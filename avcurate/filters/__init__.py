"""Rule stages: validate (structural), and later threshold, balance, subset, dedup."""
