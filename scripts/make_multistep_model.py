"""Reproduce the shipped model of the multistep task: a char-level Llama warmed up part way.

    .venv/bin/python scripts/make_multistep_model.py --out src/grpo/assets/tiny-multistep

The shipped model came from exactly this command (seed 0, plus ``--eval-every 100``, which
only prints the curve: evaluation restores the RNG state) in 1371 s of training on the
project's 2-core machine (one thread, the other core busy with other jobs). Its figures are in
``warmup_report.json`` beside the weights: held-out greedy accuracy 27.5 %, pass@8 53.5 %,
format reward 1.0; the curve went 0.0 % (100 steps), 2.0 (200), 2.5 (300), 3.0 (400),
2.5 (500), 7.5 (600), 8.0 (700), 20.5 (800), 23.5 (900), 27.5 (1000).

The model, tokenizer and batching are those of ``scripts/make_tiny_model.py`` (hidden 256,
4 layers, about 4.2M parameters, bf16 weights), and it starts from the shipped tiny-arith's
weights (``--init``), which already copy numbers out of the prompt and write the layout:
from random weights, copying the later two-digit operands is what takes longest (2.5 %
held-out after 700 steps). The data is the multistep task's ``warmup`` split
(``grpo.data.multistep``: two-digit operands, three or four steps). Every target shows its
working, so the model writes the expected layout from the start, but the warm-up stops early
(``--steps``), while it still copies a wrong operand or slips on a carry in some steps:
greedy held-out accuracy lands between 20 % and 60 % and sampling eight completions finds a
right one far more often. That gap is what GRPO has to work with.

The learning rate warms up and then stays constant, so the model after N steps is the same
as a run with ``--steps N`` stopped there (``--eval-every`` prints the curve that chose N).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_model import build_model, encode_examples, next_batch, train_step  # noqa: E402

from grpo.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from grpo.data.multistep import generate_problems  # noqa: E402
from grpo.rewards.builtin import accuracy, format_reward  # noqa: E402
from grpo.train.evaluate import pass_at_k  # noqa: E402

MAX_NEW_TOKENS = 80


@torch.no_grad()
def score(model, tokenizer, problems, samples: int = 1, batch_rows: int = 256):
    """(per-problem list of per-sample correctness, mean format reward); greedy when samples
    is 1, else sampling at temperature 1. Generation runs in float32: on this CPU, bf16
    autocast makes the many small decoding steps four times slower."""
    model.eval()
    correct: list[list[float]] = []
    fmt: list[float] = []
    batch_size = max(1, batch_rows // samples)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        enc = tokenizer(
            [p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        kw = dict(do_sample=True, temperature=1.0, top_k=0) if samples > 1 else {"do_sample": False}
        out = model.generate(
            **enc,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            num_return_sequences=samples,
            **kw,
        )
        texts = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        golds = [str(p.answer) for p in chunk for _ in range(samples)]
        acc = accuracy([""] * len(texts), texts, answer=golds)
        fmt += [f or 0.0 for f in format_reward([""] * len(texts), texts)]
        for i in range(len(chunk)):
            correct.append([a or 0.0 for a in acc[i * samples : (i + 1) * samples]])
    model.train()
    return correct, sum(fmt) / len(fmt)


def pass_at(correct: list[list[float]], k: int) -> float:
    """Mean unbiased pass@k over problems, from each problem's per-sample correctness."""
    return sum(pass_at_k(len(row), int(sum(row)), k) for row in correct) / len(correct)


def evaluate(model, tokenizer, problems, samples: int) -> dict[str, float]:
    greedy, fmt = score(model, tokenizer, problems)
    sampled, sfmt = score(model, tokenizer, problems, samples=samples)
    return {
        "heldout_greedy_accuracy": sum(r[0] for r in greedy) / len(greedy),
        "heldout_greedy_format_reward": fmt,
        "sampled_format_reward": sfmt,
        "pass@1": pass_at(sampled, 1),
        f"pass@{samples}": pass_at(sampled, samples),
    }


def save(model, tokenizer, out: Path, report: dict) -> None:
    """bf16 weights (half the bytes of fp32; the trainer upcasts), tokenizer and figures."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state)
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "warmup_report.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("src/grpo/assets/tiny-multistep"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--samples", type=int, default=8, help="samples per problem for pass@k")
    ap.add_argument(
        "--init",
        default=str(ROOT / "src/grpo/assets/tiny-arith"),
        help="weights to start from (same tokenizer); '' for a random initialisation",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--eval-every", type=int, default=0, help="print the held-out curve")
    ap.add_argument(
        "--checkpoints", type=Path, default=None, help="also save the model at each curve point"
    )
    args = ap.parse_args()

    t0 = time.time()
    # one thread by default: with two OpenMP threads on a 2-core machine that also runs
    # anything else, the threads wait at every barrier for each other and a step took minutes
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tokenizer = build_char_tokenizer()
    if args.init:
        # start from a model that already copies numbers out of the prompt and writes the
        # layout (the shipped tiny-arith): from random weights, copying two-digit operands is
        # what takes longest to learn (2.5 % held-out after 700 steps)
        torch.manual_seed(args.seed)
        model = LlamaForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    else:
        model = build_model(tokenizer, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    problems = generate_problems("warmup", args.examples, seed=args.seed)
    data = encode_examples(tokenizer, problems, 1.0, rng)
    eval_problems = generate_problems("eval", args.eval_problems, seed=0)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / args.warmup_steps)
    )
    model.train()
    order: list[int] = []
    curve = []
    for step in range(args.steps):
        batch = next_batch(data, order, rng, args.batch_size)
        loss = train_step(model, opt, sched, batch, tokenizer.pad_token_id)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} {time.time() - t0:6.1f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            # the RNG state is saved and restored so that evaluating does not change training
            state = torch.get_rng_state()
            point = {"steps": step + 1, **evaluate(model, tokenizer, eval_problems, args.samples)}
            torch.set_rng_state(state)
            curve.append(point)
            print(json.dumps(point), flush=True)
            if args.checkpoints:
                save(model, tokenizer, args.checkpoints / f"step-{step + 1}", point)

    train_s = time.time() - t0
    torch.manual_seed(args.seed)
    report = {
        "seed": args.seed,
        "steps": args.steps,
        "examples": args.examples,
        "lr": args.lr,
        "threads": args.threads,
        "init": Path(args.init).name if args.init else "random",
        "parameters": n_params,
        "train_seconds": round(train_s, 1),
        "eval_problems": args.eval_problems,
        **evaluate(model, tokenizer, eval_problems, args.samples),
    }
    if curve:
        report["curve"] = curve
    print(json.dumps(report, indent=2))

    save(model, tokenizer, args.out, report)
    print(f"saved to {args.out} in {time.time() - t0:.0f}s total")


if __name__ == "__main__":
    main()
