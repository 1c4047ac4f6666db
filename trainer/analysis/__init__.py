"""The analysis stages and their maths. The stages, each a command that reads trained runs and
stores what it finds: analyze.py (every feature of a basis), match_runs.py (feature splitting and
universality across runs), size_map.py (one map over a model's dictionary sizes) and
case_study_runs.py (the case studies); the rest is what they compute, one module per measure."""
