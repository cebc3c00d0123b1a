"""The `code` reward: run the completion's Python code against the example's tests.

Reward = fraction of the example's tests that pass, run in the sandbox
(`grpo.rewards.sandbox.launcher`).
A completion without a code block scores 0.0; a row whose `tests` cannot be read scores None
(the fault is in the data).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import queue
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from grpo.rewards.extract import completion_text
from grpo.rewards.sandbox.launcher import (
    ISOLATION_LAYERS,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    missing_isolation,
    run_in_sandbox,
)

__all__ = ["CodeExecution", "TestSuite", "extract_code", "parse_tests"]

logger = logging.getLogger("grpo.rewards")

# A fenced block: ``` or ~~~, an optional info string (the language), the body, the same fence.
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
_OPEN_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)\n", re.M)
_PYTHON_TAGS = {"python", "py", "python3", "py3", ""}


def extract_code(text: str) -> str | None:
    """The Python code of a completion: the last fenced block tagged python/py (or untagged).

    The last block is taken because models often show an example or a first attempt before the
    final answer. Blocks in other languages (```bash) are skipped. A final block whose closing
    fence is missing (the completion was cut off, or the fence was the stop string) counts when
    no closed block follows its opening. Returns None when there is no Python block.
    """
    found: str | None = None
    end_of_last = 0
    for match in _FENCE_RE.finditer(text):
        if _language(match[2]) in _PYTHON_TAGS:
            found = match[3]
        end_of_last = match.end()
    opening = _OPEN_FENCE_RE.search(text, end_of_last)
    if opening is not None and _language(opening[2]) in _PYTHON_TAGS:
        found = text[opening.end() :]
    if found is None or not found.strip():
        return None
    return found


def _language(info: str) -> str:
    words = info.strip().split()
    return words[0].lower().lstrip("{.").rstrip("}") if words else ""


@dataclass(frozen=True)
class TestSuite:
    """Tests of one example, ready for `run_in_sandbox`.

    mode "assert": cases are `{"test": code}`, setup is code run before each (imports).
    mode "io": cases are `{"input": str, "output": str}`.
    """

    mode: str
    cases: tuple[Mapping[str, str], ...]
    setup: str = ""


def parse_tests(value: Any) -> TestSuite | None:
    """Read one row's `tests` column; None when it is not in a form described below.

    - a list of strings: each is one test (usually one assert statement);
    - a string of Python: each top-level `assert` is one test and every other top-level
      statement (imports, helper definitions) is setup run before each test; code with no
      assert at all is one test that passes when it runs without raising;
    - a list of {"input": ..., "output": ...}: stdin/stdout pairs;
    - a dict {"inputs": [...], "outputs": [...]} (the APPS/TACO layout): stdin/stdout pairs;
    - a JSON string holding any of the above.
    Inputs and outputs given as lists of lines are joined with newlines.
    """
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "[{":
            try:
                return parse_tests(json.loads(stripped))
            except ValueError:
                pass  # a Python list or set literal; read it as code below
        return _python_tests(value)
    if isinstance(value, Mapping):
        inputs, outputs = value.get("inputs"), value.get("outputs")
        if isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs):
            return _io_suite(list(zip(inputs, outputs, strict=True)))
        return None
    if isinstance(value, list | tuple) and value:
        if all(isinstance(v, str) for v in value):
            if any(not _compiles(v) for v in value):
                return None
            return TestSuite("assert", tuple({"test": v} for v in value))
        if all(isinstance(v, Mapping) and "input" in v and "output" in v for v in value):
            return _io_suite([(v["input"], v["output"]) for v in value])
    return None


def _python_tests(source: str) -> TestSuite | None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    tests, setup = [], []
    for node in tree.body:
        segment = ast.get_source_segment(source, node)
        if segment is None:
            return None
        (tests if isinstance(node, ast.Assert) else setup).append(segment)
    if not tests:
        return TestSuite("assert", ({"test": source},)) if source.strip() else None
    return TestSuite("assert", tuple({"test": t} for t in tests), "\n".join(setup))


def _io_suite(pairs: list[tuple[Any, Any]]) -> TestSuite | None:
    cases = []
    for given, expected in pairs:
        given, expected = _as_text(given), _as_text(expected)
        if given is None or expected is None:
            return None
        cases.append({"input": given, "output": expected})
    return TestSuite("io", tuple(cases)) if cases else None


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _compiles(source: str) -> bool:
    try:
        compile(source, "<test>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


class CodeExecution:
    """Reward function `code`: fraction of the row's tests the completion's code passes.

    Built from config as `{name: code, kwargs: {...}}`; every keyword below is optional.

    timeout_s: wall-clock seconds for one completion's program with all its tests.
    memory_mb, max_processes, max_output_bytes, file_mb: see `SandboxLimits`.
    workers: programs run at once (each in its own sandbox); default min(4, CPU count).
    sandbox_uid: when the trainer is root, the programs run as uids sandbox_uid ...
        sandbox_uid + workers - 1 (one per worker, so the process limit of one sandbox is not
        shared with another). They should belong to no one; the default sits just below
        nobody (65534).
    require_isolation: raise instead of warning when a layer of isolation (network, PID
        namespace, read-only file system, private /tmp, unprivileged user) is unavailable.

    The call needs the dataset column `tests` (see `parse_tests` for its forms). Identical
    (code, tests) pairs in a batch run once. After each call, `last_results` holds the
    `SandboxResult` of each completion (None where nothing ran), and `batch_metrics()` the
    batch's pass fraction, timeout fraction and fraction without a code block.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_processes: int = 16,
        max_output_bytes: int = 1 << 20,
        file_mb: int = 16,
        workers: int | None = None,
        sandbox_uid: int = 65520,
        require_isolation: bool = False,
    ) -> None:
        self.limits = SandboxLimits(
            wall_s=timeout_s,
            memory_mb=memory_mb,
            max_processes=max_processes,
            max_output_bytes=max_output_bytes,
            file_mb=file_mb,
        )
        workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"code: workers must be a positive integer, got {workers!r}")
        if isinstance(sandbox_uid, bool) or not isinstance(sandbox_uid, int) or sandbox_uid < 1:
            raise ValueError(f"code: sandbox_uid must be a positive integer, got {sandbox_uid!r}")
        self.workers = workers
        self.sandbox_uid = sandbox_uid
        self.require_isolation = bool(require_isolation)
        self.last_results: list[SandboxResult | None] = []
        self._metrics: dict[str, float] = {}
        self._warned_isolation = False

    def __repr__(self) -> str:
        return f"CodeExecution({self.limits}, workers={self.workers})"

    def __call__(
        self, prompts: list[Any], completions: list[Any], tests: list[Any], **kwargs: Any
    ) -> list[float | None]:
        if len(tests) != len(completions):
            raise ValueError(
                f"code: got {len(completions)} completions but {len(tests)} values in the "
                "'tests' column; they must be aligned one per completion"
            )
        # Keyed by the program and its tests as text: G samples of one prompt often coincide.
        jobs: dict[tuple[str, str], list[int]] = {}
        suites: dict[str, TestSuite] = {}
        scores: list[float | None] = [0.0] * len(completions)
        no_code = 0
        for i, (completion, raw_tests) in enumerate(zip(completions, tests, strict=True)):
            suite = parse_tests(raw_tests)
            if suite is None:
                scores[i] = None
                continue
            code = extract_code(completion_text(completion))
            if code is None:
                no_code += 1
                continue
            suite_key = json.dumps([suite.mode, suite.setup, list(suite.cases)], sort_keys=True)
            suites[suite_key] = suite
            jobs.setdefault((code, suite_key), []).append(i)

        results: list[SandboxResult | None] = [None] * len(completions)
        uids: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.workers):
            uids.put(self.sandbox_uid + slot)

        def run(job: tuple[str, str]) -> SandboxResult:
            uid = uids.get()
            try:
                code, suite = job[0], suites[job[1]]
                return run_in_sandbox(
                    code, suite.cases, mode=suite.mode, setup=suite.setup,
                    limits=self.limits, uid=uid,
                )  # fmt: skip
            finally:
                uids.put(uid)

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="grpo-code") as pool:
            for job, result in zip(jobs, pool.map(run, jobs), strict=True):
                for i in jobs[job]:
                    results[i] = result
                    scores[i] = result.fraction
        ran = [r for r in results if r is not None]
        if ran:
            self._check_isolation(ran[0].isolation)
        self.last_results = results
        outcomes = [o for r in ran for o in r.outcomes]
        self._metrics = {
            "pass_frac": sum(o.passed for o in outcomes) / len(outcomes) if outcomes else math.nan,
            "timeout_frac": (
                sum(any(o.status == "timeout" for o in r.outcomes) for r in ran) / len(ran)
                if ran
                else math.nan
            ),
            "no_code_frac": no_code / len(completions) if completions else math.nan,
        }
        return scores

    def batch_metrics(self) -> dict[str, float]:
        """Numbers about the last call, logged as rewards/<name>/<key>."""
        return dict(self._metrics)

    def _check_isolation(self, isolation: Mapping[str, Any]) -> None:
        missing = missing_isolation(isolation)
        if not missing:
            return
        described = "; ".join(f"{m}: {ISOLATION_LAYERS[m]}" for m in missing)
        message = (
            f"code reward: the sandbox runs without these layers of isolation on this machine: "
            f"{described}. The time, memory and output limits still hold. Run the trainer as "
            "root on Linux (or where unprivileged user namespaces are allowed) to get them"
        )
        if self.require_isolation:
            raise SandboxError(message + " (require_isolation is set, so the run stops)")
        if not self._warned_isolation:
            logger.warning(message)
            self._warned_isolation = True
