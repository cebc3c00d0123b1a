"""A small real torch.distributed program that the launcher tests start on every rank.

    python payload.py OUT_DIR [ok | fail RANK | fail-hang RANK]

ok: init_process_group(gloo) from the environment the launcher set, all_reduce(rank + 1), and
write OUT_DIR/rank{R}.json with what the rank saw. fail RANK: that rank raises after joining
the group while every other rank sleeps (as a rank blocked in a collective would), so only the
launcher stopping them ends the job. fail-hang: the sleeping ranks also ignore SIGTERM (a
trainer busy saving), so the launcher must escalate to SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    out = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
    bad_rank = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    print(f"payload rank {rank} of {world} on {socket.gethostname()}", flush=True)
    if mode in ("fail", "fail-hang"):
        if rank == bad_rank:
            time.sleep(1.0)  # let the other ranks reach their sleep first
            raise RuntimeError(f"payload: rank {rank} fails on purpose")
        if mode == "fail-hang":
            signal.signal(signal.SIGTERM, lambda *_: print("payload: SIGTERM ignored", flush=True))
        time.sleep(600)
        return
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    out.mkdir(parents=True, exist_ok=True)
    seen = {
        "rank": rank,
        "world_size": world,
        "sum": t.item(),
        "env": {
            k: os.environ.get(k)
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
        },
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    print(f"payload rank {rank}: all_reduce sum {t.item()}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
