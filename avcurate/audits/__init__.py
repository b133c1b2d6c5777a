"""Audits of a run's labels: a second judge (`agree`), a person (`spotcheck` + `agree
--human`). An audit reads the run and writes only under `RUN/audits/`; the run's stages
and kept rows are never changed."""
