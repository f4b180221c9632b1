"""Where a named part of a text is, in tokens: one rule for every analysis that points at a word of its prompt
(the causal trace's subject, the Patchscopes placeholder, the token swap's words, a needle's answer).

The rule: the part must cover whole tokens. Its first character is the first character of a token and its last
character the last character of a token, whitespace around either left aside, so `cat` and ` cat` both name the
token ` cat` of "The cat sat", and neither names anything in "The catalog". A part that covers whole tokens in
more than one place is ambiguous: it is refused with every place named, unless `occurrence` chooses one.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerscope.errors import ArgumentTypeError, ArgumentValueError, LayerscopeError
from layerscope.models.loading import LoadedModel


@dataclass(frozen=True)
class _Token:
    position: int
    start: int  # the token's characters in the text, whitespace at either end left out
    end: int


def _tokens(lm: LoadedModel, text: str, special_tokens: bool) -> list[_Token]:
    """The tokens that hold characters other than whitespace, numbered as `lm.encode(text)` numbers them (with
    `special_tokens`), else as the tokenizer numbers `text` alone without special tokens."""
    try:
        encoding = lm.tokenizer(text, add_special_tokens=special_tokens, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise LayerscopeError(
            "Finding a word's tokens needs a tokenizer that reports character offsets; "
            f"the tokenizer of '{lm.name}' does not."
        ) from error
    ids = encoding.input_ids
    bos = lm.tokenizer.bos_token_id
    shift = int(special_tokens and lm.add_bos and (not ids or ids[0] != bos))  # encode() prepends BOS
    tokens = []
    for position, (start, end) in enumerate(encoding.offset_mapping):
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            first = start + piece.index(stripped)
            tokens.append(_Token(position + shift, first, first + len(stripped)))
    return tokens


def _occurrences(text: str, part: str) -> list[int]:
    """Every character offset where `part` starts in `text`, overlapping ones included."""
    found, at = [], text.find(part)
    while at >= 0:
        found.append(at)
        at = text.find(part, at + 1)
    return found


def _describe(spans: list[range]) -> str:
    return ", ".join(f"{span.start}-{span.stop - 1}" for span in spans)


def token_span(
    lm: LoadedModel,
    text: str,
    part: str,
    name: str,
    occurrence: int | None = None,
    where: str = "the prompt",
    special_tokens: bool = True,
    chooser: str | None = "occurrence",
) -> range:
    """The positions of the tokens that `part` covers in `text` (see the module's rule).

    `name` is the parameter that gave `part` and `chooser` the one that gives `occurrence`; both are named in the
    errors (`chooser=None`: nothing can choose, so a repeated part is refused). `occurrence` counts from 1 in
    the order of the text. Positions are those of `lm.encode(text)`, or of the tokenizer's ids of `text` without
    special tokens when `special_tokens` is False.
    """
    if not isinstance(part, str):
        raise ArgumentTypeError(f"{name}= must be a string, not {type(part).__name__}.")
    if occurrence is not None and (isinstance(occurrence, bool) or not isinstance(occurrence, int)):
        raise ArgumentTypeError(
            f"{chooser}= must be an int (1 = the first occurrence), not {type(occurrence).__name__}."
        )
    word = part.strip()
    if not word:
        raise LayerscopeError(f"{name}= is empty.")
    tokens = _tokens(lm, text, special_tokens)
    starts: dict[int, int] = {}  # character -> the first token that starts there (byte pieces share offsets)
    ends: dict[int, int] = {}  # character -> the last token that ends there
    for index, token in enumerate(tokens):
        starts.setdefault(token.start, index)
        ends[token.end] = index
    spans, partial = [], []
    for start in _occurrences(text, word):
        end = start + len(word)
        if start in starts and end in ends and starts[start] <= ends[end]:
            spans.append(range(tokens[starts[start]].position, tokens[ends[end]].position + 1))
        else:
            partial.append([t.position for t in tokens if t.start < end and t.end > start])
    if not spans:
        if partial:
            raise LayerscopeError(
                f"{name}={part!r} occurs in {where} only inside longer tokens (tokens "
                f"{_describe([range(p[0], p[-1] + 1) for p in partial if p])}); give whole words."
            )
        raise LayerscopeError(f"{name}={part!r} does not occur in {where} {text!r}.")
    if occurrence is None and len(spans) == 1:
        return spans[0]
    times = "once" if len(spans) == 1 else f"{len(spans)} times"
    described = f"{name}={part!r} occurs {times} in {where} (tokens {_describe(spans)})"
    if chooser is None:
        raise LayerscopeError(f"{described}; it must occur once.")
    if occurrence is None:
        raise LayerscopeError(f"{described}; choose one with {chooser}=1..{len(spans)}.")
    if not 1 <= occurrence <= len(spans):
        raise ArgumentValueError(
            f"{chooser}={occurrence} is out of range: {described}, so {chooser}= is 1..{len(spans)}."
        )
    return spans[occurrence - 1]
