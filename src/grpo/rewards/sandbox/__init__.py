"""The code sandbox: run model-written Python against tests in a separate, limited process.

- `launcher`: the trainer's side; starts the harness and reads back one verdict per test.
- `_harness.py`: the trusted side, a separate process started with `python -I`; standard
  library only, never imported by the trainer.
- `code_reward`: the `code` reward built on them (fraction of an example's tests that pass).
"""

from grpo.rewards.sandbox.code_reward import CodeExecution, TestSuite, extract_code, parse_tests
from grpo.rewards.sandbox.launcher import (
    ISOLATION_LAYERS,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    TestOutcome,
    missing_isolation,
    run_in_sandbox,
)

__all__ = [
    "ISOLATION_LAYERS",
    "CodeExecution",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "TestOutcome",
    "TestSuite",
    "extract_code",
    "missing_isolation",
    "parse_tests",
    "run_in_sandbox",
]
