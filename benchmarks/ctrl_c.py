"""Ctrl-C in the middle of a run, as a terminal sends it: time to exit and what the console shows.

    .venv/bin/python benchmarks/ctrl_c.py            # SIGINT at step 3 of a 50-step default run

Starts ``grpo train`` (the default engine: vLLM when installed) in its own process group, waits
until metrics.jsonl holds the given step, sends SIGINT to the whole group (what Ctrl-C does to a
foreground job), and prints the exit code, the seconds from the signal to the exit, the number
of console lines and whether any traceback appeared, then the console itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def logged_steps(metrics: Path) -> set[int]:
    if not metrics.is_file():
        return set()
    steps = set()
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # the line being written
            steps.add(json.loads(line).get("step", -1))
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at-step", type=int, default=3)
    ap.add_argument("overrides", nargs="*", default=["train.steps=50", "train.eval_every=0"])
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="grpo-ctrl-c-")) / "run"
    cmd = [sys.executable, "-m", "grpo", "train", *args.overrides, f"train.output_dir={run}"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    console: list[str] = []
    reader = threading.Thread(target=lambda: console.extend(proc.stdout), daemon=True)
    reader.start()
    while args.at_step not in logged_steps(run / "metrics.jsonl"):
        if proc.poll() is not None:
            print(f"the run ended (rc {proc.returncode}) before step {args.at_step}")
            print("".join(console))
            return 1
        time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait()
    took = time.monotonic() - sent
    reader.join(timeout=5)
    traceback = any("Traceback" in line for line in console)
    print(f"command: {' '.join(cmd)}")
    print(
        f"rc {rc}, exited {took:.1f} s after SIGINT, {len(console)} console lines, "
        f"{'a traceback' if traceback else 'no traceback'}"
    )
    print("".join("  | " + line for line in console), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
