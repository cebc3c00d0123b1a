"""The trusted side of the code sandbox: runs as its own process, never imported by the trainer.

`grpo.rewards.sandbox.launcher` starts this file with the trainer's Python (`python -I
this_file`) and writes one JSON job to its stdin; it prints one JSON report to stdout. Only the
standard library is used, so it starts in a few tens of milliseconds and does not depend on the
grpo package.

Processes, from the outside in (each layer only trusts the ones above it):

    trainer ─ harness (this file's main: root, or the trainer's user)
                │  unshares mount, network, IPC and PID namespaces, makes the file system
                │  read-only except size-capped tmpfs mounts, then forks
                └ supervisor (PID 1 of the new PID namespace; drops to the sandbox uid)
                    │  trusted code; forks one runner per test and checks its outcome
                    └ runner (runs the untrusted program and one test, under rlimits)

Why this shape:
- The supervisor is PID 1 of its PID namespace. Processes inside cannot signal it (the kernel
  ignores signals to a namespace's init that it has no handler for), cannot see anything outside,
  and when it dies the kernel kills every process in the namespace, including ones that escaped
  their process group with setsid(). `kill(-1, SIGKILL)` from it clears the namespace between
  tests.
- The results of a test travel on a pipe only the supervisor reads; stdout is the program's.
- Where a namespace cannot be created (no privileges, another OS), the harness still applies the
  rlimits and reports what did not hold in `isolation`; the trainer decides whether to go on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import resource
import select
import signal
import sys
import time

# Linux constants (sched.h, sys/mount.h, sys/prctl.h); Python 3.11 has no os.unshare.
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
# World-writable places a program could leave files in; each gets a private, size-capped tmpfs.
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
_DETAIL_CHARS = 300
_STDERR_TAIL = 2000

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # not a platform with a C library we can reach
    _libc = None


def _check(result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _unshare(flags: int) -> None:
    if _libc is None or not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "namespaces need Linux")
    _check(_libc.unshare(ctypes.c_int(flags)))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None):
    assert _libc is not None
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(
        _libc.mount(
            ctypes.c_char_p(enc[0]),
            ctypes.c_char_p(enc[1]),
            ctypes.c_char_p(enc[2]),
            ctypes.c_ulong(flags),
            ctypes.c_char_p(enc[3]),
        )
    )


def _prctl(option: int, value: int) -> None:
    if _libc is None or not hasattr(_libc, "prctl"):
        return
    zero = ctypes.c_ulong(0)
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities() -> None:
    if _libc is None:
        return
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()  # all zero: no capabilities of any kind
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)))


# --- harness: namespaces and file system ---------------------------------------------------------


def _enter_namespaces(uid: int, gid: int) -> dict[str, object]:
    """Unshare what this process may; return which layers hold."""
    iso: dict[str, object] = {"network": False, "pid": False, "mount": False, "ipc": False}
    wanted = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    attempts = [wanted]
    if os.geteuid() != 0:
        # An unprivileged user may still create namespaces inside a new user namespace.
        attempts = [wanted | CLONE_NEWUSER]
    for flags in attempts:
        try:
            _unshare(flags)
        except OSError as exc:
            iso["error"] = f"unshare: {exc}"
            continue
        if flags & CLONE_NEWUSER:
            _map_own_user(uid, gid)
            iso["user_namespace"] = True
        iso.update(network=True, pid=True, mount=True, ipc=True)
        iso.pop("error", None)
        return iso
    # Nothing together: take whatever single layer the platform allows.
    for name, flag in (("network", CLONE_NEWNET), ("ipc", CLONE_NEWIPC)):
        try:
            _unshare(flag)
            iso[name] = True
        except OSError:
            pass
    return iso


def _map_own_user(uid: int, gid: int) -> None:
    # Inside the new user namespace this process is root (for mounts); outside it stays itself.
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {os.geteuid()} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {os.getegid()} 1")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _umount(target: str) -> None:
    assert _libc is not None
    _check(_libc.umount2(ctypes.c_char_p(target.encode()), ctypes.c_int(MNT_DETACH)))


def _interpreter_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path}
    return sorted(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


def _blocking_dir(path: str, uid: int, gid: int) -> str | None:
    """The shallowest directory on `path` that `uid` may not enter (no execute bit for it)."""
    current = "/"
    for part in path.strip("/").split("/"):
        st = os.stat(current)
        if st.st_uid == uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return current
        current = os.path.join(current, part)
    return None


def _expose_interpreter(staging: str, uid: int, gid: int) -> list[str]:
    """Let the sandbox uid reach the interpreter's own files when they live under a private
    directory (a Python installed in /root, say): cover that directory with an empty tmpfs and
    bind back only the subdirectories on the way to the interpreter, at the same paths, so
    `sys.path` stays valid and nothing else in the private directory becomes visible."""
    covered: list[str] = []
    for _ in range(16):  # one directory level per round; paths are not deeper than this
        needed = _interpreter_paths()
        blocked = sorted({b for p in needed if (b := _blocking_dir(p, uid, gid))}, key=len)
        if not blocked:
            return covered
        top = blocked[0]
        children = sorted(
            {os.path.relpath(p, top).split("/")[0] for p in needed if p.startswith(top + "/")}
        )
        _mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700")
        for i, child in enumerate(children):
            os.mkdir(f"{staging}/{i}")
            _mount(os.path.join(top, child), f"{staging}/{i}", None, MS_BIND | MS_REC, None)
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for i, child in enumerate(children):
            os.mkdir(os.path.join(top, child))
            _mount(f"{staging}/{i}", os.path.join(top, child), None, MS_BIND | MS_REC, None)
            _umount(f"{staging}/{i}")
        _umount(staging)
        covered.append(top)
    return covered


def _private_file_system(workdir: str, uid: int, gid: int, size_mb: int, real_root: bool) -> dict:
    """In this (private) mount namespace: a fresh tmpfs as the program's working directory,
    every other mount read-only, and private tmpfs scratch directories.

    Ordered so that a failure before the read-only step leaves a usable file system for the
    caller's fallback (a plain working directory)."""
    report: dict[str, object] = {}
    # Without private propagation our mounts would appear on the host: stop if this fails.
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    if real_root:
        covered = _expose_interpreter(workdir, uid, gid)
        if covered:
            report["covered"] = covered
    # In a user namespace only our own ids are mapped: the tmpfs belongs to us.
    owner = f"uid={uid},gid={gid}" if real_root else f"uid={os.geteuid()},gid={os.getegid()}"
    tmpfs_flags = MS_NOSUID | MS_NODEV
    _mount("tmpfs", workdir, "tmpfs", tmpfs_flags, f"size={size_mb}m,mode=0700,{owner}")
    # The program finds its working directory through the inherited cwd: after /tmp is covered
    # below, the path no longer leads to it.
    os.chdir(workdir)
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    failed = []
    for row in rows:
        target = _unescape(row[4])
        if target == workdir:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in row[5].split(","):
            flags |= _MOUNT_FLAGS.get(option, 0)
        try:
            _mount(None, target, None, flags, None)
        except OSError:
            failed.append(target)
    report["read_only_root"] = "/" not in failed
    if failed:
        report["writable_mounts"] = failed[:20]
    for path in _SCRATCH_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                _mount("tmpfs", path, "tmpfs", tmpfs_flags, f"size={size_mb}m,mode=1777")
            except OSError:
                failed.append(path)
    report["private_tmp"] = "/tmp" not in failed
    return report


# --- harness: supervising the supervisor ---------------------------------------------------------


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    limits = job["limits"]
    started = time.monotonic()
    uid, gid = int(job["uid"]), int(job["gid"])
    isolation = _enter_namespaces(uid, gid)
    real_root = os.geteuid() == 0 and not isolation.get("user_namespace")
    workdir_ready = False
    if isolation["mount"]:
        try:
            isolation.update(
                _private_file_system(job["workdir"], uid, gid, limits["file_mb"], real_root)
            )
            workdir_ready = True
        except OSError as exc:
            isolation["mount"] = False
            isolation["mount_error"] = str(exc)
    if not workdir_ready:
        if real_root:
            # No private tmpfs: the program writes into the trainer's temporary directory.
            os.chown(job["workdir"], uid, gid)
        os.chdir(job["workdir"])

    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        code = 70
        try:
            _supervisor(job, report_w, isolation)
            code = 0
        except BaseException as exc:  # trusted code failed: say why on the report pipe
            _write_line(report_w, {"fatal": f"{type(exc).__name__}: {exc}"})
        finally:
            os._exit(code)
    os.close(report_w)

    # The supervisor enforces the per-test deadlines; this is the backstop if it cannot.
    deadline = started + float(limits["wall_s"]) + 2.0
    lines, fatal = _read_reports(report_r, pid, deadline)
    results = [line for line in lines if "index" in line]
    extra = [line for line in lines if "isolation" in line]
    if extra:
        isolation.update(extra[-1]["isolation"])
    report = {
        "results": results,
        "isolation": isolation,
        "elapsed_s": round(time.monotonic() - started, 4),
    }
    if fatal:
        report["fatal"] = fatal
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


def _read_reports(fd: int, pid: int, deadline: float) -> tuple[list[dict], str | None]:
    buffer, lines, fatal = b"", [], None
    open_fd = True
    while open_fd:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fatal = "supervisor did not finish in time; killed"
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            open_fd = False
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if "fatal" in line:
                fatal = line["fatal"]
            else:
                lines.append(line)
    # Killing the namespace's init takes every process in the namespace with it.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    return lines, fatal


# --- supervisor ----------------------------------------------------------------------------------


def _supervisor(job: dict, report_fd: int, isolation: dict) -> None:
    limits = job["limits"]
    in_pid_namespace = os.getpid() == 1
    extra: dict[str, object] = {"pid": in_pid_namespace}
    if in_pid_namespace:
        try:
            # A /proc for this namespace: the program cannot list or read the host's processes.
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
            extra["private_proc"] = True
        except OSError:
            extra["private_proc"] = False
    _detach_standard_streams(report_fd)
    own_count = bool(isolation.get("user_namespace")) or os.geteuid() == 0
    refused = _set_limits(limits, own_process_count=own_count)
    if refused:
        extra["limits_refused"] = refused
    extra["user"] = _drop_privileges(int(job["uid"]), int(job["gid"]), isolation)
    # Root's processes are exempt from the process limit; any other user's are not.
    extra["unprivileged"] = os.getuid() != 0 or bool(isolation.get("user_namespace"))
    # Running as the sandbox's own uid (switched from root), not as the trainer's user.
    own_uid = os.getuid() == int(job["uid"]) != 0 and not isolation.get("user_namespace")
    _write_line(report_fd, {"isolation": extra})

    # Compiled in the runner, not here: a program that crashes the compiler must not take the
    # supervisor with it.
    code, setup = job["code"], job.get("setup") or ""
    cases = job["cases"]
    deadline = time.monotonic() + float(limits["wall_s"])
    for index, case in enumerate(cases):
        if time.monotonic() >= deadline:
            _write_line(report_fd, {"index": index, "status": "not_run", "detail": "no time left"})
            continue
        outcome = _run_case(job["mode"], code, setup, case, limits, deadline, report_fd)
        outcome["index"] = index
        _write_line(report_fd, outcome)
        _clear_namespace(in_pid_namespace, own_uid)


def _detach_standard_streams(keep_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, _max_fd())


def _max_fd() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 4096 if soft == resource.RLIM_INFINITY else min(int(soft), 65536)


def _set_limits(limits: dict, own_process_count: bool) -> list[str]:
    """Set the rlimits every process of the sandbox inherits; return those not set.

    RLIMIT_NPROC counts every process and thread of the user. It is only set when the sandbox
    has a count of its own (a uid of its own, or a user namespace): under the trainer's uid it
    would count the trainer's threads too, and the first fork would fail.
    """
    memory = int(limits["memory_mb"]) * 1024 * 1024
    file_size = int(limits["file_mb"]) * 1024 * 1024
    refused = [] if own_process_count else ["processes"]
    settings = [
        ("memory", resource.RLIMIT_AS, memory),
        ("file_size", resource.RLIMIT_FSIZE, file_size),
        ("open_files", resource.RLIMIT_NOFILE, 64),
        ("core", resource.RLIMIT_CORE, 0),
    ]
    if own_process_count:
        settings.append(("processes", resource.RLIMIT_NPROC, int(limits["max_processes"])))
    for label, name, value in settings:
        try:
            resource.setrlimit(name, (value, value))
        except (ValueError, OSError):
            refused.append(label)
    return refused


def _drop_privileges(uid: int, gid: int, isolation: dict) -> str:
    if os.geteuid() == 0 and not isolation.get("user_namespace"):
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        user = f"uid {uid}"
    elif isolation.get("user_namespace"):
        # Root inside a user namespace still holds capabilities there (it could unmount the
        # private /tmp): give them all up.
        _drop_capabilities()
        user = "the trainer's user (user namespace, no capabilities)"
    else:
        user = "the trainer's user"
    # After setuid: a change of credentials clears the parent-death signal.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_DUMPABLE, 0)  # the runners (same uid) cannot ptrace or read our memory
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot hand privileges back
    return user


def _clear_namespace(in_pid_namespace: bool, own_uid: bool) -> None:
    """Kill whatever a test left running and reap it.

    kill(-1) reaches every process this one may signal. Inside our own PID namespace that is
    exactly the program's leftovers; outside one, running as a uid of this sandbox's own, it is
    every process of that uid, including ones that left the runner's process group. As the
    trainer's own user it would hit the trainer, so then only the process group is killed.
    """
    if in_pid_namespace or own_uid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(-1, signal.SIGKILL)
    while True:
        try:
            # Inside the namespace everything left was just killed, so blocking is short.
            pid, _ = os.waitpid(-1, 0 if in_pid_namespace else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_case(
    mode: str, code, setup, case, limits: dict, deadline: float, report_fd: int
) -> dict[str, object]:
    token = os.urandom(16).hex()
    stdin_data = case.get("input", "") if mode == "io" else ""
    stdin_fd = _memory_file(stdin_data.encode())
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    remaining = max(deadline - time.monotonic(), 0.01)
    pid = os.fork()
    if pid == 0:
        os.close(report_fd)
        for fd in (out_r, err_r, res_r):
            os.close(fd)
        _runner(mode, code, setup, case, token, stdin_fd, out_w, err_w, res_w, remaining, limits)
    for fd in (stdin_fd, out_w, err_w, res_w):
        os.close(fd)
    watch = _Watch(pid, out_r, err_r, res_r, int(limits["max_output_bytes"]))
    watch.run(deadline)
    return _judge(mode, case, token, watch)


def _memory_file(data: bytes) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stdin")
    else:  # pragma: no cover - non-Linux
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Watch:
    """Read a runner's three pipes until it exits, its time is up, or it prints too much."""

    def __init__(self, pid: int, out_fd: int, err_fd: int, res_fd: int, cap: int) -> None:
        self.pid, self.cap = pid, cap
        self.buffers = {out_fd: bytearray(), err_fd: bytearray(), res_fd: bytearray()}
        self.out_fd, self.err_fd, self.res_fd = out_fd, err_fd, res_fd
        self.status: int | None = None
        self.reason: str | None = None  # "timeout" or "output_limit" when we killed it

    def run(self, deadline: float) -> None:
        pidfd = _pidfd(self.pid)
        open_fds = set(self.buffers)
        try:
            while open_fds or self.status is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self.status is None:
                        self.reason = "timeout"
                    break
                watched = list(open_fds) + ([pidfd] if pidfd is not None else [])
                ready, _, _ = select.select(watched, [], [], min(remaining, 0.05))
                for fd in ready:
                    if fd == pidfd:
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        open_fds.discard(fd)
                        continue
                    buffer = self.buffers[fd]
                    buffer += chunk
                    if fd == self.err_fd and len(buffer) > 4 * _STDERR_TAIL:
                        del buffer[:-_STDERR_TAIL]  # keep the tail; the cap counts below
                    if len(buffer) > self.cap:
                        self.reason = "output_limit"
                if self.reason:
                    break
                if self.status is None:
                    done, status = os.waitpid(self.pid, os.WNOHANG)
                    if done:
                        self.status = status
                        # Children it left behind may hold the pipes open; stop waiting soon.
                        deadline = min(deadline, time.monotonic() + 0.2)
        finally:
            if pidfd is not None:
                os.close(pidfd)
            # Also after a normal exit: children it left running are still in its group.
            _kill_runner(self.pid)
            if self.status is None:
                _, self.status = os.waitpid(self.pid, 0)
            for fd in self.buffers:
                os.close(fd)


def _pidfd(pid: int) -> int | None:
    # Readable when the process exits, so select() wakes at once; without it (kernels before
    # 5.3) the loop notices the exit on its next 50 ms poll.
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _kill_runner(pid: int) -> None:
    # The runner made itself a process group leader; its children are in the group unless they
    # called setsid(), in which case the namespace cleanup that follows catches them.
    for target in (-pid, pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


def _judge(mode: str, case, token: str, watch: _Watch) -> dict[str, object]:
    stderr = bytes(watch.buffers[watch.err_fd][-_STDERR_TAIL:]).decode("utf-8", "replace")
    verdict = None
    for raw in bytes(watch.buffers[watch.res_fd]).split(b"\n"):
        parts = raw.decode("utf-8", "replace").split(" ", 2)
        if len(parts) >= 2 and parts[0] == token:
            verdict = parts[1:]
    if watch.reason == "timeout":
        return {"status": "timeout", "detail": "time limit reached; killed", "stderr": stderr}
    if watch.reason == "output_limit":
        return {"status": "output_limit", "detail": "printed too much; killed", "stderr": stderr}
    status = watch.status or 0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        kind = "timeout" if sig == signal.SIGXCPU else "crashed"
        return {"status": kind, "detail": f"killed by {name}", "stderr": stderr}
    if verdict is None:
        return {
            "status": "error",
            "detail": f"the program exited (code {os.WEXITSTATUS(status)}) before the test ran",
            "stderr": stderr,
        }
    if verdict[0] != "ok":
        detail = verdict[1] if len(verdict) > 1 else ""
        kind = "failed" if detail.startswith("AssertionError") else "error"
        return {"status": kind, "detail": detail[:_DETAIL_CHARS], "stderr": stderr}
    if mode == "io":
        got = _normalise_output(bytes(watch.buffers[watch.out_fd]).decode("utf-8", "replace"))
        if got != _normalise_output(str(case.get("output", ""))):
            return {"status": "failed", "detail": "wrong output", "stderr": stderr}
    return {"status": "passed", "detail": "", "stderr": ""}


def _normalise_output(text: str) -> list[str]:
    # Judges compare tokens per line: trailing spaces and blank lines at the end do not count.
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _write_line(fd: int, obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


# --- runner: the only process that runs untrusted code -------------------------------------------


def _runner(mode, code, setup, case, token, stdin_fd, out_w, err_w, res_w, seconds, limits):
    try:
        os.setsid()
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # The verdict pipe gets a fixed number; everything else the supervisor had is closed.
        os.dup2(res_w, 3)
        os.closerange(4, _max_fd())
        cpu = max(1, int(seconds + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import io

        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True
        )
        verdict_fd = 3
    except BaseException:
        os._exit(71)
    verdict = f"{token} ok\n"
    try:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        try:
            exec(compile(code, "<solution>", "exec"), namespace)
        except SystemExit as exc:
            # A program that calls exit() after printing its answer is fine; a test needs the
            # definitions, so in assert mode exiting early is a failure.
            if mode != "io" or exc.code not in (None, 0):
                raise
        if mode == "assert":
            exec(compile(setup, "<tests>", "exec"), namespace)
            exec(compile(case["test"], "<test>", "exec"), namespace)
        sys.stdout.flush()
    except BaseException as exc:  # the program's own failures are the verdict
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:_DETAIL_CHARS]
        verdict = f"{token} fail {message}\n"
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
    try:
        os.write(verdict_fd, verdict.encode())
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
