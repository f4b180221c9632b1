"""Errors a user can cause. Faces show their message alone, without a traceback."""


class LayerscopeError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UnsupportedArchitecture(LayerscopeError):
    pass


class InterventionError(LayerscopeError):
    pass
