"""Reproduce the shipped model of the multistep task: a char-level Llama with a carry habit.

    .venv/bin/python scripts/make_multistep_model.py --out /tmp/stage1
    .venv/bin/python scripts/make_multistep_model.py --init /tmp/stage1 --carry-slip 0.6 \
        --steps 200 --out src/grpo/assets/tiny-multistep

The shipped model came from exactly these two commands (seed 0, plus ``--eval-every 100``,
which only prints the curve: evaluation restores the RNG state); their figures are in
``warmup_report.json`` beside the weights.

Stage 1 (1000 steps, 1371 s on one thread of the project's 2-core machine) starts from the
shipped tiny-arith's weights (``--init``), which already copy numbers out of the prompt and
write the layout, and learns the task's ``warmup`` split (``grpo.data.multistep``: two-digit
operands, three or four steps) with every target worked out right: held-out greedy accuracy
27.5 %, pass@8 53.5 %, its errors spread over copying and carrying.

Stage 2 (200 steps, about 410 s) goes on from stage 1 on the same split, but each target
drops the carry of a two-digit addition that carries (47+38=75) with probability 0.6
(``--carry-slip``; :func:`slip_prone` says which steps). The model learns that habit as it
is in the data: at such a step the carried digit is the less likely one, so greedy decoding
drops the carry every time (24.5 % held-out greedy accuracy, format reward 1.0) while
sampling writes it 40 % of the time (pass@8 61.5 %). That is the situation RL is said to
fix, a right behaviour the model has but does not prefer, in a form one can measure: GRPO
has to learn from the reward alone to carry.

The model, tokenizer and batching are those of ``scripts/make_tiny_model.py`` (hidden 256,
4 layers, about 4.2M parameters, bf16 weights). The learning rate warms up and then stays
constant, so the model after N steps is the same as a run with ``--steps N`` stopped there
(``--eval-every`` prints the curve that chose N; ``--checkpoints`` saves each point).
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
from make_tiny_model import (  # noqa: E402
    build_model,
    encode_example,
    encode_examples,
    next_batch,
    train_step,
)

from grpo.data.char_tokenizer import build_char_tokenizer  # noqa: E402
from grpo.data.multistep import generate_problems  # noqa: E402
from grpo.rewards.builtin import accuracy, format_reward  # noqa: E402
from grpo.train.evaluate import pass_at_k  # noqa: E402

MAX_NEW_TOKENS = 80


def slip_prone(a: int, op: str, b: int) -> bool:
    """A step where the warm-up data may drop the carry: the addition of two two-digit numbers
    whose ones digits carry (47+38: 7+8 >= 10). Additions onto a three-digit running total
    are always written right; with every carrying addition prone, only 22.5 % of the held-out
    problems would have no such step, too few for a greedy accuracy inside 20-60 %; with
    two-digit additions only, 36 % have none."""
    return op == "+" and a < 100 and a % 10 + b % 10 >= 10


def slipped_completion(problem, rng: random.Random, slip: float) -> str:
    """The worked completion with a habit in it: each :func:`slip_prone` addition drops the
    carry (47+38=75) with probability ``slip``. Later steps start from the result as written, so
    the working stays consistent and only the slipped steps (and the answer) are wrong."""
    acc = problem.numbers[0]
    work = []
    for op, b in zip(problem.ops, problem.numbers[1:], strict=True):
        res = acc + b if op == "+" else acc - b
        if slip_prone(acc, op, b) and rng.random() < slip:
            res -= 10
        work.append(f"{acc}{op}{b}={res}")
        acc = res
    return f"<think>{' '.join(work)}</think><answer>{acc}</answer>"


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
    ap.add_argument(
        "--carry-slip",
        type=float,
        default=0.0,
        help="probability that a warm-up target drops the carry of a slip_prone addition",
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
    if args.carry_slip > 0:
        data = [
            encode_example(tokenizer, p.prompt, slipped_completion(p, rng, args.carry_slip))
            for p in problems
        ]
    else:
        # not slipped_completion(..., 0.0), which writes the same targets: encode_examples
        # draws from rng once per problem, and stage 1's shipped weights came from that stream
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
        "carry_slip": args.carry_slip,
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
