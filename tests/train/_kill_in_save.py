"""``python tests/train/_kill_in_save.py STEPS grpo-train-args...``: run ``grpo train`` but
kill this process with SIGKILL in the middle of writing the checkpoint of each step listed in
STEPS (comma-separated), after the shards and before the manifest and the rename: the worst
moment for a checkpoint. Only the first listed step that this run reaches is used, so calling
it again with the same list kills at the next one."""

from __future__ import annotations

import os
import signal
import sys

from grpo.cli import main
from grpo.train import checkpoint

steps = {int(s) for s in sys.argv[1].split(",")}
original = checkpoint._fsync_tree
seen_file = os.environ["KILL_IN_SAVE_SEEN"]  # steps already killed in, across invocations
killed = set()
if os.path.exists(seen_file):
    with open(seen_file) as f:
        killed = {int(x) for x in f.read().split()}


def fsync_then_die(root):
    original(root)
    step = int(root.name.split("step-")[1].split("-")[0])
    if step in steps and step not in killed:
        with open(seen_file, "a") as f:
            f.write(f"{step}\n")
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint._fsync_tree = fsync_then_die
sys.exit(main(["train", *sys.argv[2:]]))
