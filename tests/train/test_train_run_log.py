"""RunLog on the console: a bar on a terminal, else one summary line every log_every steps."""

from __future__ import annotations

import json

from grpo.train.run_log import RunLog

STEP = {"reward/mean": 0.5, "kl": 0.01, "completion_len/mean": 12.0, "tokens_per_s": 300.0,
        "time/step": 1.25}  # fmt: skip


def test_summary_lines_every_n_steps_and_at_the_end(tmp_path, capsys):
    log = RunLog(tmp_path, total_steps=7, progress_bar=True, log_every=3)  # not a terminal
    assert not log.draw_bar
    for step in range(1, 8):
        log.metrics(step, STEP)
        log.progress(STEP)
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert lines[0] == "step 3/7  reward 0.5  kl 0.01  len 12  tok/s 300  1.25 s/step"
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 8))


def test_a_resumed_run_counts_from_its_step_and_skips_nan(tmp_path, capsys):
    log = RunLog(tmp_path, total_steps=4, progress_bar=False, log_every=2, initial_step=2)
    log.progress({**STEP, "kl": float("nan")})  # step 3: no line
    log.progress(STEP)  # step 4: the last
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("step 4/4  reward 0.5  kl 0.01")
    log = RunLog(tmp_path, total_steps=2, progress_bar=False, log_every=1, initial_step=0)
    log.progress({**STEP, "kl": float("nan")})
    log.close()
    assert "kl" not in capsys.readouterr().out


def test_other_ranks_print_and_write_nothing(tmp_path, capsys):
    log = RunLog(tmp_path / "x", total_steps=1, progress_bar=True, log_every=1, enabled=False)
    log.metrics(1, STEP)
    log.progress(STEP)
    log.write("hello")
    log.close()
    assert capsys.readouterr().out == "" and not (tmp_path / "x").exists()
    assert log.history == [{"step": 1, **STEP}]
