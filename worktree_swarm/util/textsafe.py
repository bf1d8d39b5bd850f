"""Showing untrusted text (task descriptions, agents' summaries and logs, check output) safely: on a
terminal without control sequences, in Markdown as the characters it is and never as structure."""

from __future__ import annotations

import re
from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment

# ECMA-48 sequences a terminal acts on: CSI (colours, cursor moves, `2J` clears the screen), the
# string commands OSC/DCS/SOS/PM/APC (OSC 0 sets the window title, OSC 52 writes the clipboard,
# OSC 8 hides a link), two-character escapes (`ESC c` resets the terminal), and their 8-bit forms.
# A string command's body is cut at the first control character, so an unterminated one costs at
# most the rest of its line, never the rest of a log.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x00-\x1f\x7f-\x9f]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|[\x90\x98\x9d\x9e\x9f][^\x00-\x1f\x7f-\x9f]*(?:\x07|\x1b\\|\x9c)?"
)
# What is left after the sequences: C0 but tab and newline, DEL, C1, and the bidirectional
# overrides and isolates that make a line display in another order than it reads ("Trojan Source").
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_text(text: str) -> str:
    """TEXT without anything a terminal would act on; newlines and tabs stay, a lone carriage
    return (a progress bar redrawing its line) becomes a newline."""
    if not _CONTROL.search(text):
        return text
    text = _SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def one_line(text: str) -> str:
    """TEXT as one line without control characters: line breaks and tabs become single spaces."""
    return re.sub(r"[ \t]*\n[ \t\n]*|\t", " ", terminal_text(text))


class SafeConsole(Console):
    """A rich Console whose output carries no control sequence from the text it shows.

    Styling and cursor moves are rich's own control segments and stay; only the text of every
    other segment is cleaned, so agent output inside a table cell or a progress line is shown as text.
    """

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterator[Segment]:
        for segment in super().render(renderable, options):
            if segment.control or not _CONTROL.search(segment.text):
                yield segment
            else:
                yield Segment(terminal_text(segment.text), segment.style, segment.control)


# --- Markdown ------------------------------------------------------------------------------------

# Characters that start inline structure anywhere: escapes, code, emphasis, links and images, raw
# HTML and entities, table cell borders, strikethrough, GitHub's math, and a heading's closing `#`s.
_MD_INLINE = re.compile(r"([\\`*_\[\]<&|~$#])")
# Markers that matter at the start of a line: quotes, list items, setext underlines.
_MD_LEADING = re.compile(r"^([>+=-]|\d{1,9}(?=[.)]))")


def md_text(text: str) -> str:
    """TEXT as one line of inline Markdown that renders as exactly its characters: no heading, list,
    emphasis, link, HTML, code span or table cell border. For headings, list items and table cells."""
    escaped = _MD_INLINE.sub(r"\\\1", one_line(text).strip())
    # "1." only becomes a list item by its dot: escape that; the other markers are escaped themselves.
    match = _MD_LEADING.match(escaped)
    if match is None:
        return escaped
    if match.group(1)[0].isdigit():
        end = match.end()
        return escaped[:end] + "\\" + escaped[end:]
    return "\\" + escaped


def md_code(text: str) -> str:
    """TEXT as one inline code span: delimited by more backticks than any run inside it."""
    flat = one_line(text).strip()
    if not flat:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    # A span that starts or ends with a backtick needs a space to keep it apart from the delimiter;
    # CommonMark strips one space from each side.
    pad = " " if flat[0] == "`" or flat[-1] == "`" else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


def md_cell(text: str, *, code: bool = False) -> str:
    """TEXT as the content of one GitHub table cell (as code with CODE).

    In a table a `|` splits cells even inside a code span unless written `\\|`; since a code span
    keeps backslashes literally, text with one is shown as escaped text instead of code.
    """
    if code and "\\" not in text:
        return md_code(text).replace("|", "\\|")
    return md_text(text)


def md_fence(text: str) -> str:
    """TEXT as a fenced code block: the fence is longer than every backtick run inside, so no line of
    the text can close it (CommonMark closes a fence only with at least as many backticks)."""
    body = terminal_text(text)
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{body}\n{fence}"
