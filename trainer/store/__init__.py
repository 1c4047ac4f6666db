"""The database: its schema (schema.py, the one contract the trainer writes through and the app
reads through), writing runs so that a run only ever appears complete (database.py), and a run's
exports: the portable run file and back (runfile.py), Neuronpedia's layout (neuronpedia.py)."""
