"""
The ``taskmesh`` command's parts without processes: option parsing, the map's
output formats, the progress bar's text and drawing, the stopper's statuses,
and telling a peer that does not speak taskmesh from one that does.
"""

from __future__ import annotations

import io
import json
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage

from taskmesh import wire
from taskmesh.cli.commands import COMMANDS, MapOptions, Options, SubmitOptions
from taskmesh.cli.mapoutput import FAILED_LINE, ResultSink, escape, json_line, unescape
from taskmesh.cli.progress import ProgressBar, describe
from taskmesh.cli.runner import Stopper
from taskmesh.net.frames import PREFIX, foreign_greeting


def test_options_may_follow_the_text_and_double_dash_ends_them() -> None:
    options = SubmitOptions()
    options.parseOptions(["hi", "--no-wait", "-t", "sleep", "--priority=3"])
    assert options["payload"] == b"hi" and options["no-wait"] and options["type"] == "sleep"
    assert options["priority"] == 3
    options = SubmitOptions()
    options.parseOptions(["--", "--no-wait"])
    assert options["payload"] == b"--no-wait" and not options["no-wait"]


def test_submit_wants_exactly_one_payload_source(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(usage.UsageError, match="one of them"):
        SubmitOptions().parseOptions([])
    path = tmp_path / "p.bin"
    path.write_bytes(b"\x00\xff")
    with pytest.raises(usage.UsageError, match="one of them"):
        SubmitOptions().parseOptions(["hi", "--file", str(path)])
    options = SubmitOptions()
    options.parseOptions(["--file", str(path)])
    assert options["payload"] == b"\x00\xff"
    with pytest.raises(usage.UsageError, match="--file: .*No such file"):
        SubmitOptions().parseOptions(["--file", str(tmp_path / "missing")])


def test_help_lists_the_exit_statuses_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["-h"], ["submit", "-h"], ["map", "--help"]):
        with pytest.raises(SystemExit) as exited:
            Options().parseOptions(argv)
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "Exit status:" in text and "130" in text and "141" in text
    with pytest.raises(SystemExit):
        Options().parseOptions(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)


def test_map_format_is_checked() -> None:
    with pytest.raises(usage.UsageError, match="--format"):
        MapOptions().parseOptions(["--format", "csv"])


@given(st.binary(max_size=200))
def test_a_text_line_is_always_one_line_and_gives_the_result_back(value: bytes) -> None:
    line = escape(value)
    assert b"\n" not in line and b"\r" not in line
    assert line + b"\n" != FAILED_LINE
    assert unescape(line) == value


def test_jsonl_keeps_results_failures_and_binary_apart() -> None:
    assert json.loads(json_line(0, True, b"a\nb")) == {"index": 0, "ok": True, "result": "a\nb"}
    assert json.loads(json_line(1, True, b"")) == {"index": 1, "ok": True, "result": ""}
    assert json.loads(json_line(2, False, b"boom")) == {"index": 2, "ok": False, "reason": "boom"}
    assert json.loads(json_line(3, True, b"\xff")) == {"index": 3, "ok": True, "result_base64": "/w=="}


def test_the_sink_writes_per_batch_and_lists_every_failure() -> None:
    out = io.BytesIO()
    failures = io.BytesIO()
    events: list[str] = []
    sink = ResultSink(
        out, "text", failures, before=lambda: events.append("erase"), after=lambda: events.append("draw")
    )
    sink.write(0, True, b"x")
    sink.write(1, False, b"bad\nthing")
    assert out.getvalue() == b"" and sink.written == 0  # held until the batch ends
    sink.flush()
    assert out.getvalue() == b"x\n\\!\n" and sink.written == 2
    assert failures.getvalue() == b"line 2: bad\\nthing\n"
    assert events == ["erase", "draw"]


class ClosedPipe(io.BytesIO):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_output_is_told_once_and_nothing_more_is_written() -> None:
    closed: list[bool] = []
    sink = ResultSink(ClosedPipe(), on_closed=lambda: closed.append(True))
    for index in range(3):
        sink.write(index, True, b"r")
        sink.flush()
    assert closed == [True] and sink.closed and sink.written == 0


@given(
    done=st.integers(0, 10**9),
    failed=st.integers(0, 10**9),
    total=st.integers(0, 10**9),
    elapsed=st.floats(0, 10**6),
    width=st.integers(1, 200),
)
def test_the_bar_text_fits_any_width(done: int, failed: int, total: int, elapsed: float, width: int) -> None:
    assert len(describe(done, failed, total, elapsed, width)) <= width


def test_a_narrow_terminal_drops_the_drawn_bar_before_cutting_the_counts() -> None:
    wide = describe(500, 2, 1000, 10.0, 200)
    assert wide.startswith("[") and "ETA" in wide
    narrow = describe(500, 2, 1000, 10.0, 40)
    assert narrow.startswith("500/1,000") and "2 failed" in narrow


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_steps_aside_for_results_and_comes_back() -> None:
    now = [0.0]
    stream = Terminal()
    bar = ProgressBar(10, stream=stream, clock=lambda: now[0])
    now[0] = 1.0
    bar.update(5, 0)
    assert bar.shown
    before, after = bar.around_output()
    before()
    assert not bar.shown and stream.getvalue().endswith("\r\x1b[K")
    after()
    assert bar.shown and stream.getvalue().endswith("5/10   50.0%  0 failed  5/s  ETA 0:01")


def test_the_stopper_says_what_stopped_it() -> None:
    from twisted.internet.task import Clock

    stopper = Stopper(Clock())
    stopper.interrupt(signal.SIGINT)
    assert stopper.status() == 130 and stopper.message("3 lines") == "interrupted (SIGINT): 3 lines"
    stopper = Stopper(Clock())
    stopper.interrupt(signal.SIGTERM)
    assert stopper.status() == 143 and stopper.message("") == "terminated (SIGTERM)"


@given(st.integers(0, wire.DEFAULT_MAX_FRAME), st.binary(max_size=64))
def test_a_frame_within_the_limit_is_never_taken_for_a_foreign_peer(length: int, body: bytes) -> None:
    assert foreign_greeting(PREFIX.pack(length) + body, wire.DEFAULT_MAX_FRAME) is None


def test_text_greetings_are_recognised() -> None:
    limit = wire.DEFAULT_MAX_FRAME
    assert foreign_greeting(b"HTTP/1.1 400 Bad Request\r\n\r\n", limit) == "HTTP/1.1 400 Bad Request"
    assert foreign_greeting(b"SSH-2.0-OpenSSH_9.2\r\n", limit) == "SSH-2.0-OpenSSH_9.2"
    assert foreign_greeting(b"\xff\xff\xff\xff\x00binary", limit) is None  # too large, but not text
