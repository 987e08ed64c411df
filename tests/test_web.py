"""The web layer in memory: a real core on a Clock, its resources rendered with DummyRequest."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from test_scheduler_core import FakeChannel
from twisted.internet.task import Clock
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from taskmesh.core.scheduler import Policy, Scheduler
from taskmesh.errors import StoreUnavailable
from taskmesh.store.memory import MemoryStore
from taskmesh.web.resources import build_root, web_token
from taskmesh.web.service import endpoint_is_loopback
from taskmesh.web.view import MeshView, payload_preview
from taskmesh.wire import STATUS_FAILED, STATUS_OK


class BrokenStore(MemoryStore):
    """A store whose commits fail while ``broken``."""

    broken = False

    def commit(self) -> bool:
        if self.broken:
            raise StoreUnavailable("disk full")
        return True


def mesh(store: MemoryStore | None = None, token: str | None = None):  # type: ignore[no-untyped-def]
    clock = Clock()
    core = Scheduler(clock, store or MemoryStore(), Policy(prefetch=2))
    core.start()
    view = MeshView(core, clock)
    root, events = build_root(view, token)
    return clock, core, view, root, events


class Request(DummyRequest):
    """DummyRequest with the cookie API the guard uses."""

    cookies: list[bytes]

    def addCookie(self, name: bytes, value: bytes, **attributes: object) -> None:
        self.cookies = [*getattr(self, "cookies", []), name + b"=" + value]


def get(root, path: str, args: dict[bytes, list[bytes]] | None = None, cookie: bytes | None = None):  # type: ignore[no-untyped-def]
    request = Request([part.encode() for part in path.strip("/").split("/")] if path != "/" else [b""])
    request.method = b"GET"
    if args:
        request.args = args
    # What twisted.web's Request parses from the Cookie header (DummyRequest has none).
    request.received_cookies = {b"taskmesh_token": cookie} if cookie is not None else {}
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    if body is not NOT_DONE_YET:
        request.write(body)
    return request, b"".join(request.written)


def test_health_is_200_serving_and_503_while_the_store_cannot_commit() -> None:
    store = BrokenStore()
    clock, core, view, root, _ = mesh(store)
    request, body = get(root, "/health")
    assert request.responseCode == 200 and body == b"serving\n"
    store.broken = True
    core.submit("echo", b"x")
    clock.advance(0)
    request, body = get(root, "/health")
    assert request.responseCode == 503
    assert b"store unavailable" in body and b"disk full" in body


def test_status_separates_running_from_prefetched_and_counts_per_worker() -> None:
    clock, core, view, root, _ = mesh()
    channel = FakeChannel()
    worker = core.add_worker(channel, "w1", 1, frozenset({"echo"}))
    ids = [core.submit("echo", b"%d" % n)[0] for n in range(3)]
    _, body = get(root, "/api/status")
    status = json.loads(body)
    assert status["tasks"]["running"] == 1
    assert status["tasks"]["prefetched"] == 2
    assert status["version"]
    core.complete(worker, [(ids[0], STATUS_OK, b"ok"), (ids[1], STATUS_FAILED, b"boom")])
    clock.advance(0)
    _, body = get(root, "/api/workers")
    (listed,) = json.loads(body)
    assert (listed["name"], listed["slots"], listed["done"], listed["failed"]) == ("w1", 1, 1, 1)


def test_metrics_parse_with_prometheus_clients_own_parser() -> None:
    clock, core, view, root, _ = mesh()
    worker = core.add_worker(FakeChannel(), "w1", 2, frozenset({"echo"}))
    ok, _ = core.submit("echo", b"a")
    bad, _ = core.submit("echo", b"b")
    core.complete(worker, [(ok, STATUS_OK, b""), (bad, STATUS_FAILED, b"no")])
    clock.advance(0)
    request, body = get(root, "/metrics")
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert samples[("taskmesh_task_submitted_total", (("type", "echo"),))] == 2
    assert samples[("taskmesh_task_finished_total", (("outcome", "succeeded"), ("type", "echo")))] == 1
    assert samples[("taskmesh_task_finished_total", (("outcome", "failed"), ("type", "echo")))] == 1
    assert samples[("taskmesh_workers", ())] == 1
    assert samples[("taskmesh_worker_slots", (("worker", "w1"),))] == 2
    assert samples[("taskmesh_store_available", ())] == 1
    assert families["taskmesh_task_submitted"].type == "counter"
    assert families["taskmesh_task_runtime_seconds"].type == "histogram"
    assert samples[("taskmesh_task_runtime_seconds_count", (("type", "echo"),))] == 2
    assert samples[("taskmesh_task_runtime_seconds_bucket", (("le", "0.001"), ("type", "echo")))] == 2
    assert samples[("taskmesh_task_queue_wait_seconds_bucket", (("le", "+Inf"), ("type", "echo")))] == 2


def test_events_stream_the_status_once_per_publish_and_forget_finished_listeners() -> None:
    clock, core, view, root, events = mesh()
    view.sample()
    request, body = get(root, "/events")
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert b"event: history\n" in body and b"event: status\n" in body
    assert events.listeners == {request}
    core.submit("echo", b"x")
    clock.advance(1)
    view.sample()
    before = len(request.written)
    events.publish()
    update = b"".join(request.written[before:])
    status = json.loads(update.split(b"event: status\ndata: ")[1].split(b"\n\n")[0])
    assert status["tasks"]["queued"] == 1
    assert b"event: point\n" in update
    request.processingFailed(Exception("gone"))  # the browser went away
    assert events.listeners == set()


def test_rates_come_from_samples_not_from_work_per_task() -> None:
    clock, core, view, root, _ = mesh()
    view.sample()
    for n in range(20):
        core.submit("echo", b"%d" % n)
    clock.advance(2)
    view.sample()
    assert view.rates()["submitted_per_second"] == 10.0
    assert view.chart()[-1]["queued"] == 20


def test_beyond_loopback_the_token_is_asked_once_then_its_cookie() -> None:
    token = web_token(b"s" * 32)
    clock, core, view, root, _ = mesh(token=token)
    request, _ = get(root, "/api/status")
    assert request.responseCode == 403
    request, _ = get(root, "/api/status", args={b"token": [b"wrong"]})
    assert request.responseCode == 403
    request, body = get(root, "/api/status", args={b"token": [token.encode()]})
    assert request.responseCode in (None, 200) and json.loads(body)["tasks"]
    assert any(token.encode() in cookie for cookie in request.cookies)
    request, _ = get(root, "/metrics", cookie=token.encode())
    assert request.responseCode in (None, 200)
    request, _ = get(root, "/health")  # for load balancers: says serving or not, nothing more
    assert request.responseCode == 200


def test_which_endpoints_count_as_loopback() -> None:
    assert endpoint_is_loopback("tcp:9002:interface=127.0.0.1")
    assert not endpoint_is_loopback("tcp:9002")
    assert not endpoint_is_loopback("tcp:9002:interface=0.0.0.0")


def test_a_task_page_shows_the_payload_as_text_and_the_outcome_once_finished() -> None:
    clock, core, view, root, _ = mesh()
    task_id, _ = core.submit("echo", b"<script>alert(1)</script>\xff")
    _, body = get(root, f"/api/tasks/{task_id}")
    task = json.loads(body)
    assert task["state"] == "queued" and task["type"] == "echo"
    assert task["payload"] == "<script>alert(1)</script>\ufffd"  # text for textContent, never markup
    worker = core.add_worker(FakeChannel(), "w1", 1, frozenset({"echo"}))
    core.complete(worker, [(task_id, STATUS_OK, b"done")])
    clock.advance(0)
    _, body = get(root, f"/api/tasks/{task_id}")
    assert json.loads(body)["state"] == "succeeded"
    request, _ = get(root, "/api/tasks/999999")
    assert request.responseCode == 404
    assert payload_preview(b"x" * 3000, limit=10).endswith("(2990 more bytes)")


def test_status_text_counts_map_items_and_separates_running_from_held() -> None:
    from taskmesh.cli.commands import describe_status

    clock, core, view, root, _ = mesh()
    clock.advance(10)  # before the worker joins: a silent fake worker would miss its heartbeats
    worker = core.add_worker(FakeChannel(), "w1", 1, frozenset({"echo"}))
    for n in range(3):
        core.submit("echo", b"%d" % n)
    core.job_items[0] += 100_000  # as a finished map leaves them
    text = describe_status(core.stats())
    assert "scheduler 0.1.0, up 10 s, 3 tasks submitted" in text
    assert "1 running, 2 prefetched" in text
    assert "map items: 100,000 succeeded, 0 failed" in text
    assert "rate: 10,000.0 completed/s on average since start" in text
    assert "store: available" in text
    assert "w1" in text and worker.slots == 1
    assert "rate: 5.0 completed/s" in describe_status(core.stats(), rate=5.0)
    assert "draining" not in text
    core.drain(worker, [])  # it shuts down warm
    line = next(line for line in describe_status(core.stats()).splitlines() if "w1" in line)
    assert line.endswith("echo  (draining: finishing what it runs, taking no more)")


def test_the_task_list_pages_through_the_store_with_live_states_and_filters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from taskmesh.store.sqlite import SqliteStore
    from taskmesh.web.resources import build_root as build

    store = SqliteStore(str(tmp_path / "t.sqlite"))
    try:
        clock = Clock()
        core = Scheduler(clock, store, Policy(prefetch=0))
        core.start()
        root, _ = build(MeshView(core, clock, store), None)
        worker = core.add_worker(FakeChannel(), "w1", 1, frozenset({"echo"}))
        ids = [core.submit("echo" if n % 2 else "other", b"%d" % n)[0] for n in range(5)]
        clock.advance(0)  # committed
        core.complete(worker, [(ids[1], STATUS_FAILED, b"boom")])  # the worker then runs ids[3]
        clock.advance(0)
        _, body = get(root, "/api/tasks", args={b"limit": [b"2"]})
        page = json.loads(body)
        assert [t["id"] for t in page["tasks"]] == [ids[4], ids[3]]
        assert page["next_before"] == ids[3]
        _, body = get(root, "/api/tasks", args={b"before": [str(ids[3]).encode()]})
        rest = json.loads(body)["tasks"]
        assert [t["id"] for t in rest] == [ids[2], ids[1], ids[0]]
        states = {t["id"]: t["state"] for t in rest}
        assert states == {ids[0]: "queued", ids[1]: "failed", ids[2]: "queued"}
        assert page["tasks"][1]["state"] == "running"  # ids[3]: live state from the core
        _, body = get(root, "/api/tasks", args={b"state": [b"failed"]})
        assert [t["id"] for t in json.loads(body)["tasks"]] == [ids[1]]
        _, body = get(root, "/api/tasks", args={b"type": [b"echo"], b"state": [b"unfinished"]})
        assert [t["id"] for t in json.loads(body)["tasks"]] == [ids[3]]
        request, _ = get(root, "/api/tasks", args={b"state": [b"bogus"]})
        assert request.responseCode == 400
    finally:
        store.close()


def test_status_shows_scheduled_tasks_and_the_schedules_and_a_task_page_its_due_time() -> None:
    from taskmesh.store.interface import ScheduleRecord
    from taskmesh.wire import TaskOptions

    clock, core, view, root, _ = mesh()
    clock.advance(1000)
    task_id, _ = core.submit("echo", b"later", TaskOptions(delay=30.0))
    core.add_schedule(
        ScheduleRecord(
            "beat", None, 10.0, "UTC", "echo", b"x", 0, None, 0, False, True, False, 0.0, None, None
        )
    )
    clock.advance(0)
    _, body = get(root, "/api/status")
    status = json.loads(body)
    assert status["tasks"]["scheduled"] == 1
    (beat,) = status["schedules"]
    assert (beat["name"], beat["every"], beat["next_due"], beat["last_task"]) == ("beat", 10.0, 1010.0, None)
    _, body = get(root, f"/api/tasks/{task_id}")
    page = json.loads(body)
    assert (page["state"], page["due"]) == ("scheduled", 1030.0)
    clock.advance(10)
    _, body = get(root, "/api/status")
    assert json.loads(body)["schedules"][0]["last_due"] == 1010.0


def test_metrics_have_commit_times_per_commit_and_connections_by_role_counted_at_scrape() -> None:
    from handshakes import SECRETS, shake
    from twisted.internet.testing import StringTransport

    from taskmesh import wire
    from taskmesh.net.scheduler_protocol import SchedulerFactory

    clock = Clock()
    core = Scheduler(clock, MemoryStore(), Policy())
    core.start()
    factory = SchedulerFactory(core, clock, SECRETS)
    root, _ = build_root(MeshView(core, clock, connections=factory.connections_by_role), None)

    def connect(hello: wire.Hello | None) -> None:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if hello is not None:
            shake(protocol, transport, hello)

    connect(wire.Hello(role=wire.ROLE_CLIENT, name="c1"))
    connect(wire.Hello(role=wire.ROLE_CLIENT, name="c2"))
    connect(wire.Hello(role=wire.ROLE_WORKER, name="w", slots=1, task_types=["echo"]))
    connect(None)  # connected, no hello yet
    commits_before = core.commit_times.counts[:]
    for n in range(50):  # fifty tasks in one turn: one commit
        core.submit("echo", b"%d" % n)
    clock.advance(0)
    _, body = get(root, "/metrics")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    roles = {"client": 2, "worker": 1, "handshake": 1}
    for role, count in roles.items():
        assert samples[("taskmesh_connections", (("role", role),))] == count
    assert families["taskmesh_store_commit_seconds"].type == "histogram"
    commits = sum(core.commit_times.counts) - sum(commits_before)
    assert commits == 1
    assert samples[("taskmesh_store_commit_seconds_count", ())] == sum(core.commit_times.counts)
    # On a Clock no time passes during a commit: every one is in the first bucket.
    assert samples[("taskmesh_store_commit_seconds_bucket", (("le", "0.0001"),))] == sum(
        core.commit_times.counts
    )


def test_a_standby_answers_health_503_and_tells_where_the_leader_is_only_with_the_token() -> None:
    from taskmesh.web.standby import standby_root

    leader = ["10.0.0.1:9001"]
    open_root = standby_root(lambda: leader[0], None)  # on loopback: no token asked
    request, body = get(open_root, "/health")
    assert request.responseCode == 503 and body == b"standby: not the leader\n"
    for path in ("/", "/api/status", "/metrics"):
        request, body = get(open_root, path)
        assert request.responseCode == 503 and b"the leader is at 10.0.0.1:9001" in body, path
    leader[0] = ""
    assert b"the leader is at (none elected yet)" in get(open_root, "/")[1]

    token = web_token(b"s" * 32)
    guarded = standby_root(lambda: "10.0.0.1:9001", token)
    request, body = get(guarded, "/health")  # open to probes, and tells nothing
    assert request.responseCode == 503 and b"10.0.0.1" not in body
    request, body = get(guarded, "/")
    assert request.responseCode == 403 and b"10.0.0.1" not in body
    request, body = get(guarded, "/", cookie=token.encode())
    assert request.responseCode == 503 and b"10.0.0.1:9001" in body
