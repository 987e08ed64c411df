"""
What a failure looks like when it leaves a worker: text a person can read,
whatever the exception that caused it.

A handler may raise anything, and its exception's text may be anything: a
lone surrogate that UTF-8 cannot encode, a ``__str__`` that raises, a message
of a hundred megabytes.  None of that may stop a worker from reporting the
task's failure, so everything that turns an exception into bytes lives here
and never raises.
"""

from __future__ import annotations

import traceback as _traceback

#: A failure reason longer than this is cut: it is for a person to read, and
#: must never make a frame too large.
MAX_REASON = 4096
#: A traceback longer than this keeps its first and last parts: the frames
#: nearest the error, and the exception itself, are at the end.
MAX_TRACEBACK = 16384


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) written as a backslash escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_middle(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters by dropping its middle (tracebacks end with the news)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head - 64
    return f"{text[:head]}\n... ({len(text) - head - tail:,} characters cut) ...\n{text[-tail:]}"


def type_name(value: object) -> str:
    """The name of ``value``'s class (an exception's, say), however strange the class."""
    try:
        return safe_text(str(type(value).__name__))
    except BaseException:
        return "exception"


def error_text(error: BaseException) -> str:
    """``str(error)``, or a placeholder when that raises (or returns something else than text)."""
    try:
        text = str(error)
    except BaseException as e:
        return f"<str() of the exception raised {type_name(e)}>"
    return safe_text(text)


def describe_error(error: BaseException | None) -> str:
    """
    The one-line reason a submitter reads: ``Type: message``, valid UTF-8,
    at most MAX_REASON characters; never raises.
    """
    if error is None:
        return "failed without an exception"
    name = type_name(error)
    text = error_text(error)
    return bounded(f"{name}: {text}" if text else name, MAX_REASON)


def format_traceback(error: BaseException) -> str:
    """The exception's traceback as Python prints it (causes included), bounded; never raises."""
    try:
        text = "".join(_traceback.format_exception(error))
    except BaseException:
        return describe_error(error)
    return bounded_middle(safe_text(text), MAX_TRACEBACK)
