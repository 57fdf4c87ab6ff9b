"""The load generator still works: every scenario against wsgateway for a few seconds.

This checks the instrument, never the speed of anything: each scenario ran, opened what it
was asked to, and reported numbers that make sense together. Full runs stay manual
(``loadtest/README.md``). The pure pieces (histogram, capacity, the wire formats) are checked
without sockets at the end.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest import wire
from loadtest.metrics import Histogram, RatePoint, capacity
from loadtest.report import markdown

REPO = Path(__file__).resolve().parent.parent
PHASES = {"idle", "connect", "echo", "echohttp", "unicast", "fanout", "crossnode/unicast", "crossnode/fanout", "cluster", "slow"}
SMOKE_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("loadtest")
    run = subprocess.run(
        # --duration 1: a 1 s window a phase, not --smoke's 2 s. The checks below are of what ran
        # and whether its numbers agree, none of how long it ran; the quietest phase (slow, 20
        # posts/s) still shows ~20 ms of server CPU, two clock ticks (at 0.5 s it read 0 at times).
        [sys.executable, "-m", "loadtest", "all", "--target", "wsgateway", "--smoke", "--duration", "1", "--quiet",
         "--out", str(out)],
        cwd=REPO,
        check=False,
        capture_output=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-4000:]
    data = orjson.loads((out / "results.json").read_bytes())
    data["out"] = out
    data["by_phase"] = {r["phase"]: r for r in data["results"]}
    return data


def test_every_scenario_ran(smoke: dict[str, Any]) -> None:
    assert set(smoke["by_phase"]) == PHASES
    for record in smoke["results"]:
        assert record["status"] == "ok", record
        assert record["target"] == "wsgateway"


def test_numbers_are_sane(smoke: dict[str, Any]) -> None:
    for record in smoke["results"]:
        lat = record["latency_ms"]
        assert record["throughput"] > 0, record
        assert record["error_total"] == 0, record["errors"]
        assert lat["count"] > 0
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert record["opened"] == record["connections"]
        assert record["server"]["rss_mb"] > 0 and record["server"]["cpu_percent"] >= 0
        assert record["generator"]["processes"] >= 1


def test_idle_reports_memory_per_connection(smoke: dict[str, Any]) -> None:
    idle = smoke["by_phase"]["idle"]
    assert idle["throughput"] == idle["connections"]  # every connection still held
    assert idle["extra"]["rss_per_conn_kb"] > 0


def test_fanout_reaches_every_client(smoke: dict[str, Any]) -> None:
    for phase in ("fanout", "crossnode/fanout", "cluster"):
        record = smoke["by_phase"][phase]
        assert record["extra"]["messages_published"] > 0
        assert record["extra"]["delivered_share"] == 1.0
        assert record["latency_last_ms"]["p99"] >= record["latency_ms"]["p50"]


def test_unicast_is_signed_and_delivered(smoke: dict[str, Any]) -> None:
    for phase in ("unicast", "crossnode/unicast"):
        record = smoke["by_phase"][phase]
        assert record["extra"]["requests_per_s"] > 0  # a bad SigV4 signature would be http_403
        assert record["request_latency_ms"]["count"] > 0


def test_server_efficiency_and_redis_commands_are_reported(smoke: dict[str, Any]) -> None:
    for record in smoke["results"]:
        per_op = record["server"]["cpu_us_per_op"]
        assert (per_op is None) if record["phase"] == "idle" else per_op > 0, record["server"]
    for phase in ("crossnode/unicast", "crossnode/fanout", "cluster"):
        extra = smoke["by_phase"][phase]["extra"]
        assert extra["redis_calls_per"] == "request"
        if phase == "crossnode/unicast":  # posts of one loop iteration share a PUBLISH
            assert 0 < extra["redis_calls_per_op"] <= 2, extra
        else:  # a fan-out reads its tenant's nodes (SMEMBERS) for every post
            assert extra["redis_calls_per_op"] >= 1, extra
    assert "server CPU µs/op" in (smoke["out"] / "report.md").read_text()


def test_slow_clients_are_counted(smoke: dict[str, Any]) -> None:
    slow = smoke["by_phase"]["slow"]
    assert slow["offered_rate"] == 20
    assert slow["extra"]["stalled"] == 4  # 10% of 40
    assert slow["extra"]["receivers"] == 36  # 35 listeners + the publisher's sentinel


def test_report_and_plots_are_written(smoke: dict[str, Any]) -> None:
    report = (smoke["out"] / "report.md").read_text()
    for phase in PHASES:
        assert f"## {phase}\n" in report
    assert list((smoke["out"] / "plots").glob("*-throughput.png"))


# -- pure pieces, no sockets --------------------------------------------------------------


def test_histogram_percentiles_within_one_percent() -> None:
    hist = Histogram.from_samples([1_000_000] * 99 + [100_000_000])
    assert hist.total == 100
    assert 1_000_000 <= hist.percentile(50) <= 1_010_000
    assert hist.percentile(100) == 100_000_000 == hist.max_ns
    merged = hist.merge(Histogram.from_samples([5_000_000]))
    assert merged.total == 101 and merged.max_ns == 100_000_000
    assert Histogram().summary().count == 0


def test_capacity_is_the_highest_sustained_rate() -> None:
    points = [RatePoint(1000, 1000, 2.0), RatePoint(2000, 1990, 30.0), RatePoint(4000, 3000, 80.0)]
    assert capacity(points) == 2000
    assert capacity([RatePoint(1000, 500, 1.0)]) is None
    assert capacity([RatePoint(1000, 1000, 1.0, errors=3)]) is None


def test_wire_stamps_and_socketio_frames() -> None:
    text = wire.body(123, 7, 200, "echo")
    assert len(text) == 200
    assert wire.read_stamp(text) == (123, 7)
    frame = wire.action_frame("socketio", "echo", text)
    assert frame.startswith('42["echo",')
    assert wire.payload("socketio", frame) == text
    assert wire.payload("socketio", "2") is wire.PING
    assert wire.connect_ack_sid('40{"sid":"abc"}') == "abc"
    with pytest.raises(ValueError):
        wire.connect_ack_sid('44{"message":"unauthorized"}')


def test_markdown_ratio_to_bare() -> None:
    def rec(target: str, throughput: float) -> dict[str, Any]:
        return {
            "scenario": "echo", "phase": "echo", "target": target, "status": "ok", "offered_rate": None,
            "throughput": throughput, "unit": "round trips/s", "error_total": 0, "errors": {}, "extra": {},
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "count": 10},
            "server": {"cpu_percent": 90.0, "rss_mb": 50.0}, "generator": {"cpu_percent": 50.0, "saturated": False},
        }

    text = markdown({"command": "x"}, [rec("bare", 1000.0), rec("wsgateway", 500.0)])
    assert "| wsgateway | max | 500 | 0.50x |" in text


def test_signer_matches_botocore() -> None:
    from loadtest.backend import connection_path
    from loadtest.signer import Signer

    signer = Signer("AKIDLOADTEST", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    for path, body in ((connection_path("L0SM9cOFvHcCIhw="), b'{"t":1}'), ("/@tenants/t1/messages", b""),
                       (connection_path("a/b+c~d"), bytes(range(256)))):
        signer.check("127.0.0.1:8081", path, body)  # raises unless botocore signs the same
    fixed = Signer("AKIDLOADTEST", "secret", clock=lambda: 1_800_000_000.0)
    assert fixed.headers("h:1", "/p", b"x").startswith("X-Amz-Date: 20270115T080000Z\r\n")


def test_scan_frames_cuts_server_frames_at_their_boundaries() -> None:
    from websockets.frames import Frame, Opcode

    from loadtest.clients import scan_frames

    sizes = (0, 1, 125, 126, 127, 65535, 65536)
    frames = [Frame(Opcode.TEXT, b"a" * n).serialize(mask=False) for n in sizes]
    frames.insert(2, Frame(Opcode.PING, b"hi").serialize(mask=False))
    stream = b"".join(frames)
    got = [(first, end - body) for first, body, end in scan_frames(stream)]
    assert got == [(0x81, 0), (0x81, 1), (0x89, 2), (0x81, 125), (0x81, 126), (0x81, 127), (0x81, 65535),
                   (0x81, 65536)]
    cut = len(frames[0]) + len(frames[1]) + 3  # inside the ping frame: stop before it
    assert [end for _, _, end in scan_frames(stream[:cut])] == [len(frames[0]), len(frames[0]) + len(frames[1])]
    masked = Frame(Opcode.TEXT, b"x").serialize(mask=True)
    assert list(scan_frames(masked)) == []


@pytest.mark.parametrize("use_httptools", [True, False])
async def test_response_parsers_split_pipelined_responses(use_httptools: bool) -> None:
    import asyncio

    from loadtest import http_client

    if use_httptools and http_client.httptools is None:
        pytest.skip("httptools is not installed")
    cls = http_client._HttptoolsParser if use_httptools else http_client._AiohttpParser
    one = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"delivered\":3}"
    gone = b"HTTP/1.1 410 Gone\r\nx-amzn-ErrorType: GoneException\r\nContent-Length: 0\r\n\r\n"
    stream = one + gone + one
    for cut in (1, 20, len(one) - 3, len(one) + 5, len(stream) - 1):
        parser = cls(asyncio.get_running_loop())
        got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert got == [(200, b'{"delivered":3}'), (410, b""), (200, b'{"delivered":3}')]
    with pytest.raises(ValueError):
        cls(asyncio.get_running_loop()).feed(b"NOT HTTP AT ALL\r\n\r\n")


def test_core_busy_from_proc_stat() -> None:
    from loadtest.resources import parse_stat

    text = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 5 80 5 0 0 0 0 0\ncpu1 50 0 20 20 0 0 10 0 0 0\nintr 1\n"
    assert parse_stat(text) == {0: (15, 100), 1: (80, 100)}


def test_markdown_efficiency_ratio() -> None:
    from loadtest.report import efficiency_to_bare

    def rec(target: str, us: float) -> dict[str, Any]:
        return {"phase": "unicast", "target": target, "status": "ok", "offered_rate": None,
                "server": {"cpu_us_per_op": us}}

    records = [rec("bare", 50.0), rec("wsgateway", 100.0)]
    assert efficiency_to_bare(records[1], records) == 0.5



def test_summary_takes_ratios_against_a_chosen_baseline_within_each_run() -> None:
    """``python -m loadtest.summary --baseline raw``: each ratio against ``raw`` in its own
    run first, then the median (the raw ceilings are targets of the same runs)."""
    from loadtest.summary import markdown as summary_markdown
    from loadtest.summary import medians

    def rec(target: str, throughput: float, us: float) -> dict[str, Any]:
        return {"phase": "crossnode/unicast", "target": target, "status": "ok", "offered_rate": None,
                "throughput": throughput, "server": {"cpu_us_per_op": us}}

    runs = [({}, [rec("raw", 1000.0, 10.0), rec("wsgateway", 400.0, 40.0)]),
            ({}, [rec("raw", 500.0, 10.0), rec("wsgateway", 250.0, 20.0)]),
            ({}, [rec("raw", 800.0, 10.0), rec("wsgateway", 240.0, 25.0)])]
    rows = {r["target"]: r for r in medians(runs, "raw")}
    assert rows["wsgateway"]["ratio"] == 0.4  # 0.4, 0.5, 0.3: not 250/800
    assert rows["wsgateway"]["efficiency"] == 0.4  # 0.25, 0.5, 0.4
    assert rows["raw"]["ratio"] == 1.0
    assert medians(runs)[0]["ratio"] is None  # no bare in these runs
    assert "| x raw |" in summary_markdown(list(rows.values()), "raw")

class _Transport:
    """Collects what a client connection writes (no socket)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("split", [0, 1, 3])
async def test_client_reads_frames_around_websockets_after_the_handshake(split: int) -> None:
    import asyncio

    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.uri import parse_uri
    from websockets.utils import accept_key

    from loadtest.clients import ClientConn, _Wire

    conn = ClientConn(ClientProtocol(parse_uri("ws://127.0.0.1/?token=t")), "plain")
    opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    transport = _Transport()
    conn.wire = _Wire(conn, opened)
    conn.wire.connection_made(transport)  # type: ignore[arg-type]
    request_lines = transport.out[0].decode().split("\r\n")
    key = next(line.split(": ")[1] for line in request_lines if line.startswith("Sec-WebSocket-Key"))
    head = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode()
    first, second = (Frame(Opcode.TEXT, data).serialize(mask=False) for data in (b"one", b"two" * 50))
    ping = Frame(Opcode.PING, b"p").serialize(mask=False)
    got: list[bytes] = []
    conn.start_reader(lambda text, _: got.append(bytes(text)))  # type: ignore[arg-type]
    conn.wire.data_received(head + first + second[:split])  # the 101 may bring part of a frame
    rest = second[split:] + ping + first
    conn.wire.data_received(rest[:5])
    conn.wire.data_received(rest[5:])
    assert opened.done() and conn.is_open
    assert got == [b"one", b"two" * 50, b"one"]
    assert len(transport.out) == 2  # the upgrade request, then the pong websockets wrote


def test_help_without_the_extra_is_one_line_naming_it() -> None:
    """``-S`` hides site-packages, as a fresh venv without the extra would: no traceback."""
    run = subprocess.run([sys.executable, "-S", "-m", "loadtest", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "python -m loadtest needs the 'loadtest' extra: pip install -e '.[loadtest]' (no module named 'numpy')"
    ]


def test_help_with_the_extra_lists_the_scenarios() -> None:
    run = subprocess.run([sys.executable, "-m", "loadtest", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 0 and run.stderr == ""
    assert "Scenarios: idle:" in run.stdout.replace("\n", " ")


@pytest.mark.parametrize("script", ["bench_instructions", "bench_server_instructions",
                                    "bench_management_instructions", "bench_crossnode_instructions", "bench_sigv4"])
def test_the_instruction_harnesses_answer_help_with_their_whole_first_sentence(script: str) -> None:
    """loadtest/README.md runs these by path; ``--help`` must print usage, not a traceback, and
    the description must not stop in the middle of a line of the docstring."""
    run = subprocess.run([sys.executable, f"loadtest/{script}.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    description = " ".join(run.stdout.split("\n\n")[1].split())
    assert description.endswith("."), description


def test_the_console_target_configures_a_password_the_plain_one_a_default_console() -> None:
    from loadtest.targets import TARGETS, gateway_config
    from wsgateway.config import parse_config

    keys = {"secret": "s" * 32, "access_key": "AKIDX", "secret_key": "k"}
    with_console = parse_config(tomllib.loads(gateway_config(**keys, console_password="p" * 32)), env={})
    assert with_console.console_enabled and with_console.console.password == "p" * 32
    plain = parse_config(tomllib.loads(gateway_config(**keys)), env={})
    assert plain.console == type(plain.console)()  # as a default install has it
    assert "wsgateway-console" in TARGETS


def test_the_report_says_which_management_edge_the_servers_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers run the clone's source: compiled only if built in place there (setup.py)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from loadtest import servers

    monkeypatch.setattr(servers, "REPO_ROOT", tmp_path)
    (tmp_path / "wsgateway").mkdir()
    (tmp_path / "wsgateway" / "management.py").write_text("")
    assert servers.management_edge() == "Python"
    (tmp_path / "wsgateway" / f"management{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    assert servers.management_edge() == "compiled"
    assert "wsgateway's management edge: compiled." in markdown({"management_edge": "compiled"}, [])
