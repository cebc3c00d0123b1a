"""Hostile completions for the `code` reward.

Each program's test passes only if its attack worked on the host (the loop returned, the file
appeared, the listener got a connection, the parent died...). So reward 0 means the sandbox
stopped the attack, and the checks after the batch confirm that nothing was left behind.

Safety of this file itself: the dangerous programs (fork bomb, killing processes) only run
after `isolation` shows that every layer holds and a bounded fork test shows the process limit
holds; elsewhere they are skipped. Limits are small (1.5 s wall) and the programs run in
parallel, one batch for all of them.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from grpo.rewards import RewardFunction, SandboxLimits, run_in_sandbox, score_completions
from grpo.rewards.sandbox.code_reward import CodeExecution
from grpo.rewards.sandbox.launcher import SandboxResult, missing_isolation

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")

REPO = Path(__file__).resolve().parents[2]
WALL_S = 1.5
WORKERS = 4
UID_BASE = 65520
MAX_PROCESSES = 8
LIMITS = SandboxLimits(
    wall_s=WALL_S, memory_mb=256, max_processes=MAX_PROCESSES, max_output_bytes=64 * 1024
)
NONCE = f"{os.getpid()}-{time.monotonic_ns()}"
# Set-up and clean-up around the wall limit: about 0.1 s on an idle machine; generous, because
# the machine running the tests may be busy.
OVERHEAD_S = 2.0


def fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```"


@pytest.fixture(scope="module")
def isolation() -> dict[str, Any]:
    result = run_in_sandbox("x = 1", [{"test": "assert x == 1"}], mode="assert", limits=LIMITS)
    assert result.passed == 1
    return result.isolation


def test_process_limit_holds_for_a_bounded_fork(isolation: dict[str, Any]) -> None:
    """Before any fork bomb: fork at most 200 children and count how many the limit allows."""
    if missing_isolation(isolation):
        pytest.skip(f"isolation incomplete here: {missing_isolation(isolation)}")
    program = (
        "import os, time\n"
        "FORKED = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    FORKED += 1\n"
    )
    # The supervisor and the runner count against the limit too.
    allowed = MAX_PROCESSES - 2
    result = run_in_sandbox(
        program,
        [{"test": "assert FORKED > 0"}, {"test": f"assert FORKED <= {allowed}, FORKED"}],
        mode="assert",
        limits=LIMITS,
        uid=UID_BASE,
    )
    assert [o.status for o in result.outcomes] == ["passed", "passed"], result.outcomes
    assert not _sandbox_processes()  # the sleeping children died with the sandbox


def _sandbox_processes() -> list[int]:
    """Pids of processes running as one of the sandbox uids."""
    uids = {str(UID_BASE + i) for i in range(WORKERS)}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and uids & set(line.split()[1:]):
                found.append(int(entry.name))
    return found


@dataclass
class HostileRun:
    names: list[str]
    scores: list[float | None]
    results: dict[str, SandboxResult]
    seconds: float
    metrics: dict[str, float]
    listener_got: list[bytes]
    escaped_files: list[Path]
    sandbox_dirs_before: set[Path]
    mounts_before: str
    after_scores: list[float | None]


@pytest.fixture(scope="module")
def hostile(
    isolation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostileRun]:
    if missing_isolation(isolation):
        pytest.skip(f"isolation incomplete here, not running hostile code: {isolation}")
    host_dir = tmp_path_factory.mktemp("host")
    escaped_files = [
        host_dir / "escaped.txt",  # a host directory under /tmp
        REPO / f"escaped-{NONCE}.txt",  # the repository
        Path(f"/tmp/grpo-hostile-{NONCE}"),  # the host's /tmp itself
        Path(f"/dev/shm/grpo-hostile-{NONCE}"),
    ]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    programs = {
        "infinite_loop": "def solve():\n    while True:\n        pass\n    return 1",
        "fork_bomb": (
            "import os\n"
            "def solve():\n"
            "    while True:\n"
            "        try:\n"
            "            os.fork()\n"
            "        except OSError:\n"
            "            pass\n"
            "    return 1"
        ),
        "memory_bomb": (
            "def solve():\n"
            "    blocks = []\n"
            "    while True:\n"
            "        blocks.append(bytearray(50_000_000))\n"
            "    return 1"
        ),
        # Counts the writes that would be visible on the host; /tmp and /dev/shm are written
        # too (they succeed, into the sandbox's private tmpfs) and checked on the host below.
        "write_outside": (
            "def solve():\n"
            "    landed = 0\n"
            f"    for path in {[str(p) for p in escaped_files]!r}:\n"
            "        try:\n"
            "            with open(path, 'w') as f:\n"
            "                f.write('escaped')\n"
            "            landed += not path.startswith(('/tmp/grpo-', '/dev/shm/'))\n"
            "        except OSError:\n"
            "            pass\n"
            "    return 1 if landed else 0"
        ),
        "socket_to_listener": (
            "import socket\n"
            "def solve():\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    s.sendall(b'exfiltrated')\n"
            "    return 1"
        ),
        "kill_parent": (
            "import os, signal\n"
            "def solve():\n"
            "    parent = os.getppid()\n"
            f"    for pid in (parent, {os.getpid()}, 1):\n"
            "        try:\n"
            "            os.kill(pid, signal.SIGKILL)\n"
            "        except OSError:\n"
            "            pass\n"
            "    try:\n"
            "        os.kill(-1, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
            "    try:\n"
            "        os.kill(parent, 0)\n"
            "    except ProcessLookupError:\n"
            "        return 1\n"
            "    return 0"
        ),
        "print_gigabytes": (
            "import sys\n"
            "def solve():\n"
            "    chunk = 'x' * 1_000_000\n"
            "    for _ in range(10_000):\n"
            "        sys.stdout.write(chunk)\n"
            "    return 1"
        ),
        "control": "def solve():\n    return 1",
    }
    names = list(programs)
    sandbox_dirs_before = set(Path(tempfile.gettempdir()).glob("grpo-sandbox-*"))
    mounts_before = Path("/proc/self/mountinfo").read_text()

    # The trainer's own path: the reward built from a config entry, called by score_completions.
    rf = RewardFunction.from_spec(
        "code",
        kwargs={
            "timeout_s": WALL_S,
            "memory_mb": 256,
            "max_processes": MAX_PROCESSES,
            "max_output_bytes": 64 * 1024,
            "workers": WORKERS,
            "sandbox_uid": UID_BASE,
        },
    )
    code: CodeExecution = rf.fn  # type: ignore[assignment]
    start = time.perf_counter()
    scores = score_completions(
        [rf],
        ["hostile"] * len(names),
        [fenced(programs[n]) for n in names],
        {"tests": [["assert solve() == 1"]] * len(names)},
    )
    seconds = time.perf_counter() - start
    results = dict(zip(names, code.last_results, strict=True))
    metrics = scores.metrics()

    listener_got = []
    try:
        connection, _ = listener.accept()
        listener_got.append(connection.recv(1024) or b"<connected>")
        connection.close()
    except BlockingIOError:
        pass
    listener.close()

    # The trainer goes on: the next batch is scored normally.
    after = score_completions(
        [rf], ["q"], [fenced("def solve():\n    return 1")], {"tests": [["assert solve() == 1"]]}
    )
    yield HostileRun(
        names=names,
        scores=scores.per_function["code"].tolist(),
        results={k: v for k, v in results.items() if v is not None},
        seconds=seconds,
        metrics=metrics,
        listener_got=listener_got,
        escaped_files=escaped_files,
        sandbox_dirs_before=sandbox_dirs_before,
        mounts_before=mounts_before,
        after_scores=after.per_function["code"].tolist(),
    )
    for path in escaped_files:  # only if a test failed and something got through
        path.unlink(missing_ok=True)


HOSTILE = [
    "infinite_loop",
    "fork_bomb",
    "memory_bomb",
    "write_outside",
    "socket_to_listener",
    "kill_parent",
    "print_gigabytes",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_scores_zero_within_its_limits(hostile: HostileRun, name: str) -> None:
    score = hostile.scores[hostile.names.index(name)]
    result = hostile.results[name]
    assert score == 0.0, (name, result.outcomes)
    # The harness's own clock: the program's wall limit plus set-up and clean-up (about 0.1 s;
    # the margin is for a loaded machine).
    assert result.elapsed_s < WALL_S + OVERHEAD_S, (name, result.elapsed_s)


def test_each_attack_was_stopped_the_right_way(hostile: HostileRun) -> None:
    status = {name: hostile.results[name].outcomes[0].status for name in HOSTILE}
    assert status["infinite_loop"] == "timeout"
    assert status["fork_bomb"] == "timeout"
    assert status["memory_bomb"] in ("error", "crashed")
    assert "MemoryError" in hostile.results["memory_bomb"].outcomes[0].detail or (
        status["memory_bomb"] == "crashed"
    )
    assert status["write_outside"] == "failed"  # it ran, but nothing landed on the host
    assert status["socket_to_listener"] == "error"
    assert "Network is unreachable" in hostile.results["socket_to_listener"].outcomes[0].detail
    assert status["kill_parent"] == "failed"  # the parent was still alive afterwards
    assert status["print_gigabytes"] == "output_limit"
    # Quick ones are quick: the output cap acts at 64 KiB, long before the wall limit.
    assert hostile.results["print_gigabytes"].elapsed_s < WALL_S


def test_the_control_passes_and_the_trainer_keeps_going(hostile: HostileRun) -> None:
    assert hostile.scores[hostile.names.index("control")] == 1.0
    assert hostile.after_scores == [1.0]
    # 8 programs on 4 workers: two rounds of at most the wall limit, plus start-up.
    assert hostile.seconds < 2 * (WALL_S + OVERHEAD_S)
    assert hostile.metrics["rewards/code/timeout_frac"] == pytest.approx(2 / 8)


def test_the_listener_received_nothing(hostile: HostileRun) -> None:
    assert hostile.listener_got == []


def test_nothing_left_behind(hostile: HostileRun) -> None:
    assert [p for p in hostile.escaped_files if p.exists()] == []
    assert set(Path(tempfile.gettempdir()).glob("grpo-sandbox-*")) == hostile.sandbox_dirs_before
    assert Path("/proc/self/mountinfo").read_text() == hostile.mounts_before
    assert _sandbox_processes() == []


def _system_python() -> str | None:
    """A Python (3.9+, for pidfd_open) that any user may run: the unprivileged path needs one."""
    import shutil
    import subprocess

    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if shutil.which(candidate) is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import os, sys; print(sys.version_info >= (3, 9))"],
            capture_output=True,
            text=True,
            user=65534,
            group=65534,
            extra_groups=[],
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    # pytest's own tmp_path sits under a directory only root may enter.
    path = Path(tempfile.mkdtemp(prefix="grpo-unprivileged-test-"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_trainer_gets_a_user_namespace(shared_tmp: Path) -> None:
    """A trainer that is not root cannot switch users: the harness then builds its namespaces
    inside a user namespace and drops every capability. Run it as nobody to check that."""
    import json
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to start the harness as another user")
    python = _system_python()
    if python is None:
        pytest.skip("no Python that an unprivileged user can run")
    tmp_path = shared_tmp
    harness = tmp_path / "harness.py"
    shutil.copy(Path(__file__).parents[2] / "src/grpo/rewards/sandbox/_harness.py", harness)
    workdir = tmp_path / "work"
    workdir.mkdir()
    for path in (tmp_path, workdir):
        os.chown(path, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    escaped = tmp_path / "escaped.txt"
    program = (
        "import os, socket, time\n"
        "FORKED = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    FORKED += 1\n"
        "CAPS = open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n"
    )
    cases = [
        {"test": f"assert 0 < FORKED <= {MAX_PROCESSES}, FORKED"},
        {"test": "assert int(CAPS, 16) == 0, CAPS"},
        {"test": f"open({str(escaped)!r}, 'w')"},  # must fail: read-only
        {"test": "socket.create_connection(('127.0.0.1', 22), timeout=1)"},  # must fail
    ]
    job = {
        "code": program,
        "setup": "",
        "mode": "assert",
        "cases": cases,
        "limits": {
            "wall_s": 3.0,
            "memory_mb": 256,
            "max_processes": MAX_PROCESSES,
            "max_output_bytes": 65536,
            "file_mb": 8,
        },
        "uid": UID_BASE,
        "gid": UID_BASE,
        "workdir": str(workdir),
    }
    proc = subprocess.run(
        [python, "-I", str(harness)],
        input=json.dumps(job).encode(),
        capture_output=True,
        timeout=20,
        env={"PATH": "/usr/bin:/bin"},
        cwd=workdir,
        user=65534,
        group=65534,
        extra_groups=[],
        start_new_session=True,
        check=False,
    )
    assert proc.stdout, proc.stderr.decode()[-2000:]
    report = json.loads(proc.stdout)
    if not report["isolation"].get("user_namespace"):
        pytest.skip(f"unprivileged user namespaces are not allowed here: {report['isolation']}")
    assert missing_isolation(report["isolation"]) == []
    statuses = [r["status"] for r in sorted(report["results"], key=lambda r: r["index"])]
    assert statuses == ["passed", "passed", "error", "error"], report["results"]
    assert not escaped.exists()
    assert os.listdir(workdir) == []
