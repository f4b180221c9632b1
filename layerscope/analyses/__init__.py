"""Analyses: each takes a loaded model and plain inputs and returns a serialisable result.

Import the modules directly (`layerscope.analyses.lens`, ...). This package imports nothing
itself, so light modules such as `prompt_sets` can be used without loading torch.
"""
