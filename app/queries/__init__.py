"""The query layer: what the pages read from the database, with bound parameters only, as the
response models of app.models. runs.py holds the runs, their features and tokens (and
NotFoundError); families.py a feature's matches, families and universality; splitting.py feature
splitting across a model's sizes; interpretability.py the stored interpretability scores;
token_search.py which units fire most on a token."""
