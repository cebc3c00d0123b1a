"""A quiet console for a run started from the command line: our lines, the progress bar, and
the warnings that say something the user can act on.

``prepare_environment`` runs before torch is imported (its C++ warnings are configured then);
``quiet_libraries`` after. With ``debug`` everything is left at the libraries' defaults and
vLLM logs at INFO. The vLLM engine filters its own known-harmless start-up messages wherever it
runs (``grpo.rollout.vllm_engine``); library users of ``grpo.train`` keep their own logging.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["prepare_environment", "quiet_libraries"]


def prepare_environment(debug: bool) -> None:
    """Environment variables read once, at import: set before torch and vLLM are imported.
    Values the user set are kept."""
    if debug:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        return
    # c10's own warnings printed from C++ (vLLM's CPU worker: "NUMA binding: Using MEMBIND
    # policy ..."): errors only. Warnings torch raises through Python are unaffected.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def quiet_libraries(debug: bool) -> None:
    """transformers at WARNING without its progress bars (loading and saving a checkpoint
    draws two per run); deprecation notices raised inside vLLM, which the user cannot act on,
    hidden."""
    if debug:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # also huggingface_hub's
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"vllm(\.|$)")
