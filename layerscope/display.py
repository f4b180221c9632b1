"""How text from a prompt or a model is shown, in the explorer's grid and in figures: whitespace and control
characters made visible, so a token's spaces read and nothing it holds can drive a terminal. Plain Python."""

from __future__ import annotations

WHITESPACE = str.maketrans({" ": "·", "\n": "⏎", "\t": "⇥"})
_CONTROLS = str.maketrans(
    {
        **{code: chr(0x2400 + code) for code in range(0x20) if code != 0x0A},
        0x7F: "␡",
        **{code: f"\\x{code:02x}" for code in range(0x80, 0xA0)},
    }
)


def visible(text: str) -> str:
    """Control characters as their pictures (ESC -> ␛, BEL -> ␇, NUL -> ␀; C1 codes as \\x9b), so text from a
    prompt or a model can never drive the terminal. Newlines stay: callers that need one line use token_label."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


def token_label(text: str, width: int) -> str:
    """Whitespace and control characters made visible (' Paris' -> '·Paris', ESC -> ␛), cut to width."""
    text = visible(text.translate(WHITESPACE))
    return text if len(text) <= width else text[: width - 1] + "…"
