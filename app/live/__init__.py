"""The live pages' model work: loading a run's model and SAE and reading its features on a text
(inference.py), greedy continuations with a feature pinned (steering.py), both run in bounded
child processes (pool.py)."""
