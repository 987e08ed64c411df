"""@taskmesh.task: the decorator, options, argument checks, pickling, and loading task modules."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

import taskmesh
from taskmesh import wire
from taskmesh.functions import as_task, load_tasks, make_task, tasks_in
from taskmesh.handlers import HandlerError, HandlerRegistry, ITaskHandler, load_import_path


@taskmesh.task
def add(x: int, y: int) -> int:
    return x + y


@taskmesh.task(name="math.scale", blocking=False, priority=3, timeout=10, max_attempts=5)
def scale(x: float, factor: float = 2.0, *, offset: float = 0.0) -> float:
    return x * factor + offset


@taskmesh.task
async def later(x: int) -> int:
    return x


@taskmesh.task(cpu_bound=True)
def crunch(n: int) -> int:
    return sum(range(n))


def plain(x: int) -> int:
    return x * 10


def test_a_task_is_named_after_its_function_and_is_a_handler() -> None:
    assert (add.name, add.blocking, add.cpu_bound) == ("add", True, False)
    assert (scale.name, scale.blocking) == ("math.scale", False)
    assert (later.blocking, later.is_async) == (False, True)
    assert (crunch.blocking, crunch.cpu_bound) == (True, True)
    registry = HandlerRegistry([add, scale, later, crunch])
    assert registry.names() == ("add", "crunch", "later", "math.scale")
    assert ITaskHandler.providedBy(add)


def test_called_directly_a_task_is_its_function() -> None:
    assert add(2, 3) == 5
    assert scale(2, offset=1) == 5


def test_run_takes_json_arguments_and_gives_a_json_result() -> None:
    assert add.run(b"[2,3]") == b"5"
    assert scale.run(b'{"args":[2],"kwargs":{"factor":3,"offset":1}}') == b"7"
    running = later.run(b"[4]")
    assert isinstance(running, Deferred)
    box: list[object] = []
    running.addBoth(box.append)
    assert box == [b"4"]


def test_settings_that_make_no_sense_are_refused_where_they_are_written() -> None:
    async def coroutine() -> None:
        pass

    with pytest.raises(ValueError, match="async"):
        make_task(coroutine, blocking=True)
    with pytest.raises(ValueError, match="cpu_bound"):
        make_task(plain, blocking=False, cpu_bound=True)
    with pytest.raises(ValueError, match="name"):
        make_task(lambda: None)
    with pytest.raises(ValueError):
        make_task(plain, name="x" * 300)  # a task type is at most 255 bytes
    with pytest.raises(ValueError, match="priority"):
        taskmesh.task(priority=2**40)(plain)
    with pytest.raises(TypeError, match="already a task"):
        make_task(add)


def test_decorator_options_are_the_defaults_and_options_overrides_them() -> None:
    assert scale.submit_options == wire.TaskOptions(priority=3, timeout=10, max_attempts=5)
    assert scale.enqueue_options.no_result
    assert add.submit_options is wire.DEFAULT_OPTIONS  # nothing to send
    urgent = scale.options(priority=9, key="k")
    assert urgent.submit_options == wire.TaskOptions(priority=9, timeout=10, max_attempts=5, key="k")
    assert (urgent.name, urgent.function) == (scale.name, scale.function)
    assert scale.submit_options.priority == 3  # the original is unchanged
    with pytest.raises(ValueError):
        add.options(timeout=-1)


def test_arguments_are_checked_against_the_signature_before_sending() -> None:
    add.check_call((1, 2), {})
    scale.check_call((1,), {"offset": 2})
    with pytest.raises(TypeError, match="add\\(\\): missing a required argument"):
        add.check_call((1,), {})
    with pytest.raises(TypeError, match="too many"):
        add.check_call((1, 2, 3), {})
    with pytest.raises(TypeError, match=r"add\.options\(\.\.\.\)"):
        add.check_call((1, 2), {"priority": 5})  # an option where an argument goes: the hint says so
    with pytest.raises(TypeError, match="not JSON"):
        add.call_payload((1, {2}), {})


def test_a_remote_task_is_known_by_name_and_checks_nothing() -> None:
    ref = taskmesh.remote("add", priority=2)
    ref.check_call((1, 2, 3, 4), {"anything": 1})
    assert ref.call_payload((1,), {}) == b"[1]"
    assert ref.submit_options.priority == 2
    with pytest.raises(TypeError, match="remote"):
        ref.run(b"[]")


def test_a_plain_function_is_taken_by_its_name() -> None:
    wrapped = as_task(plain)
    assert wrapped.name == "plain" and as_task(plain) is wrapped  # made once
    assert as_task(add) is add
    with pytest.raises(TypeError, match="task function"):
        as_task(42)


def test_a_task_pickles_by_reference_for_the_process_pool() -> None:
    again = pickle.loads(pickle.dumps(crunch))
    assert again is crunch  # the module's own object, not a copy of code
    wrapped = pickle.loads(pickle.dumps(as_task(plain)))
    assert wrapped.name == "plain" and wrapped.run(b"[2]") == b"20"

    @taskmesh.task
    def nested() -> None:
        pass

    with pytest.raises(TypeError, match="module-level"):
        pickle.dumps(nested)


def test_every_task_of_a_module_is_found() -> None:
    found = tasks_in(sys.modules[__name__])
    assert sorted(task.name for task in found) == ["add", "crunch", "later", "math.scale"]


MODULE = """
import taskmesh

@taskmesh.task
def double(x):
    return 2 * x

def helper():
    pass
"""


def test_task_modules_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mytasks.py").write_text(MODULE)
    (tmp_path / "empty.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('oops')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert [task.name for task in load_tasks("mytasks")] == ["double"]
        with pytest.raises(HandlerError, match="no @taskmesh.task"):
            load_tasks("empty")
        with pytest.raises(HandlerError, match="RuntimeError: oops"):
            load_tasks("broken")
        with pytest.raises(HandlerError, match="cannot import"):
            load_tasks("no_such_module_here")
        # --handler takes a plain function (a task named after it), or a task
        double = load_import_path("mytasks:double")
        helper = load_import_path("mytasks:helper")
        assert getattr(double, "name", None) == "double" and getattr(helper, "name", None) == "helper"
        with pytest.raises(HandlerError, match="does not provide"):
            load_import_path("empty:x")
    finally:
        for name in ("mytasks", "empty", "broken"):
            sys.modules.pop(name, None)
