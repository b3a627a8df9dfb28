"""Cost of one training step, side by side: plain fine-tune vs pruning step (and, where
built, the two-branch transfer steps), MiniLM on CPU at the same total batch.

    python benchmarks/step_cost.py [--batch 32 --tokens 40 --repeats 10 --threads 2]

Steps of every mode are interleaved round-robin in one process after warm-up; the table
gives medians and the ratio of each mode to the plain fine-tune and to the pruning step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tlprune.arch import from_hf, unit_sizes
from tlprune.bench.latency import random_inputs
from tlprune.gates import GateConfig, GateSet, Lagrangian, make_gate_optimizers
from tlprune.models import load_classifier
from tlprune.train.loop import set_trainable
from tlprune.train.prune_phase import GatedModel
from tlprune.transfer.adapt import backward_adapted

Step = Callable[[], None]


class Plain:
    """What backward_adapted needs of an Accelerator, without one."""

    @staticmethod
    def backward(loss: torch.Tensor, **kw) -> None:
        loss.backward(**kw)


def batch(vocab: int, size: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    b = random_inputs(vocab, size, tokens, seed)
    b["labels"] = torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(seed))
    return b


def finetune_step(base: str, size: int, tokens: int, freeze: list[str]) -> Step:
    model = from_hf(load_classifier(base, ["negative", "positive"])).train()
    set_trainable(model, freeze)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    b = batch(model.config.vocab_size, size, tokens)
    inputs = {k: v for k, v in b.items() if k != "labels"}

    def step() -> None:
        loss = F.cross_entropy(model(**inputs).logits, b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def prune_step(base: str, size: int, tokens: int, freeze: list[str]) -> Step:
    model = from_hf(load_classifier(base, ["negative", "positive"])).train()
    set_trainable(model, freeze)
    gates = GateSet(GateConfig(init_log_alpha=3.0), unit_sizes(model.config), seed=0)
    gm = GatedModel(model, gates, Lagrangian()).train()
    w_opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    g_opt, l_opt = make_gate_optimizers(gates, gm.lagrangian, 3e-2)
    b = batch(model.config.vocab_size, size, tokens)

    def step() -> None:
        loss, _ = gm(b, 0.5)
        loss.backward()
        for opt in (w_opt, g_opt, l_opt):
            opt.step()
            opt.zero_grad()
        gates.clamp_()

    return step


def transfer_step(coupling: str, adapt: bool = False) -> Callable[[str, int, int, list[str]], Step]:
    """A two-branch pruning step: half the batch from the target, half from an auxiliary
    classification task (same total batch as the single-branch step); `adapt`:
    the gradient-cosine weighting's two backward passes (transfer/adapt.py)."""

    def make(base: str, size: int, tokens: int, freeze: list[str]) -> Step:
        from tlprune.config.transfer import AuxConfig, ScheduleConfig, TransferConfig
        from tlprune.transfer.aux import AuxData
        from tlprune.transfer.branch import build_branch

        model = from_hf(load_classifier(base, ["negative", "positive"])).train()
        set_trainable(model, freeze)
        gate_cfg = GateConfig(init_log_alpha=3.0)
        sizes = unit_sizes(model.config)
        gates = GateSet(gate_cfg, sizes, seed=0)
        half = size // 2
        vocab = model.config.vocab_size
        rows = [
            {"input_ids": r, "label": int(r[0] % 2)}
            for r in batch(vocab, 64 * half, tokens, seed=1)["input_ids"]
        ]
        data = AuxData("aux", AuxConfig(source="x", batch_size=half), rows, ["a", "b"], tokens)
        soft = coupling == "soft"
        tc = TransferConfig(
            coupling=coupling,
            weights=["all"],
            masks=["all"],
            aux_prune=soft,
            beta=ScheduleConfig(value=1e-3 if soft else 0.0),
            gamma=ScheduleConfig(value=1e-2 if soft else 0.0),
            adapt="cosine" if adapt else "none",
        )
        branch = build_branch(model, gates, [data], None, tc, gate_cfg, sizes, 0)
        task = branch.tasks[0]
        task.collate = lambda rs: {
            "input_ids": torch.stack([r["input_ids"] for r in rs]),
            "attention_mask": torch.ones(len(rs), tokens, dtype=torch.long),
            "labels": torch.tensor([r["label"] for r in rs]),
        }
        lag = Lagrangian()
        gm = GatedModel(model, gates, lag, branch=branch).train()
        set_trainable(branch.encoder, freeze)
        weights = [p for p in model.parameters() if p.requires_grad]
        weights += [p for p in branch.weight_params() if p.requires_grad]
        w_opt = torch.optim.AdamW(weights, lr=2e-5)
        gparams, lparams = list(gates.parameters()), list(lag.parameters())
        if branch.gates is not None:
            gparams += list(branch.gates.parameters())
            lparams += list(branch.lagrangian.parameters())
        g_opt, l_opt = make_gate_optimizers(gparams, lparams, 3e-2)
        branch.bind(1000, 300, lambda step: 0.5)
        b = batch(vocab, half, tokens)

        def step() -> None:
            loss, _ = gm(b, 0.5, None, 10)
            aux, branch.task_term = branch.task_term, None
            if aux is not None:
                shared, gates_m = branch.shared_weights(), branch.shared_gates()
                backward_adapted(Plain, loss, aux, shared, gates_m)
            else:
                loss.backward()
            for opt in (w_opt, g_opt, l_opt):
                opt.step()
                opt.zero_grad()
            gates.clamp_()
            if branch.gates is not None:
                branch.gates.clamp_()

        return step

    return make


MODES: dict[str, Callable[[str, int, int, list[str]], Step]] = {
    "finetune": finetune_step,
    "prune": prune_step,
    "shared": transfer_step("shared"),
    "soft": transfer_step("soft"),
    "shared-adapt": transfer_step("shared", adapt=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--freeze", default="", help="e.g. word_embeddings")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    freeze = [f for f in args.freeze.split(",") if f]
    modes = [m for m in args.modes.split(",") if m]
    steps = {m: MODES[m](args.model, args.batch, args.tokens, freeze) for m in modes}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(args.repeats):
        for m, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    print(
        f"{args.model}, batch {args.batch} x {args.tokens} tokens, freeze {freeze or 'none'}, "
        f"{args.threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; medians of {args.repeats} "
        "interleaved steps"
    )
    print("| mode | median step (s) | vs finetune | vs prune |")
    print("|---|---|---|---|")
    for m in steps:
        vs_ft = f"{med[m] / med['finetune']:.2f}x" if "finetune" in med else "-"
        vs_pr = f"{med[m] / med['prune']:.2f}x" if "prune" in med else "-"
        print(f"| {m} | {med[m]:.3f} | {vs_ft} | {vs_pr} |")


if __name__ == "__main__":
    main()
