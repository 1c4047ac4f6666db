"""The command line and the pipeline: the layer above both rooms.

`monosemantic.cli` parses the commands, `monosemantic.pipeline` runs each stage of a run from its
config, and `monosemantic.study` expands the stages for the paper's comparisons. This package
imports `trainer` (every stage) and `app` (serving and pre-rendering); neither imports it, and
`trainer` never imports `app` (tests/test_layers.py reads the imports and holds both rules).
"""
