"""The ground floor: the sample table, the run store, caches, counting, the one answer and
trace parsers, and option declarations. Imports nothing else from avcurate."""
