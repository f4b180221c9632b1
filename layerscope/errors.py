"""Errors a user can cause. Faces show their message alone, without a traceback."""


class LayerscopeError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UnsupportedArchitecture(LayerscopeError):
    pass


class InterventionError(LayerscopeError):
    pass


class ArgumentTypeError(LayerscopeError, TypeError):
    """A Python API argument of the wrong type; the message names the parameter (`top_k=`)."""


class ArgumentValueError(LayerscopeError, ValueError):
    """A Python API argument out of its range; the message names the parameter (`top_k=`)."""


def require_utf8(text: str | bytes, what: str) -> str:
    """`text` as a str the tokenizer accepts, or one error naming the first byte that is not UTF-8.

    Bytes come from stdin. A str from the command line carries such bytes as lone surrogates (Python's
    surrogateescape), which the tokenizer rejects with a TypeError; the prompt is refused rather than
    altered, because an analysis of a silently edited prompt would be an analysis of another prompt.
    """
    try:
        if isinstance(text, bytes):
            return text.decode("utf-8")
        text.encode("utf-8")
        return text
    except UnicodeDecodeError as error:
        bad = f"byte 0x{error.object[error.start]:02x} at offset {error.start}"
    except UnicodeEncodeError as error:
        code = ord(error.object[error.start])
        bad = (
            f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        ) + f" at character {error.start}"
    raise LayerscopeError(f"{what} is not valid UTF-8 ({bad}); convert it first, e.g. with iconv -t utf-8.")
