"""Model-driven curation stages: the 4-dimension judge (score) and the taxonomy classifier."""
