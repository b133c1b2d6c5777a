"""Looking at a run: DuckDB views (`avcurate query`) and statistics (`avcurate stats`)."""
