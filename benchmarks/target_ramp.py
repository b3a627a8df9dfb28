"""How fast the Lagrangian brings MiniLM-sized gates to the target, with the target ramped
from 0 (CoFi) or from the gates' initial expected sparsity (tlprune's default).

Gates and multipliers only, no task loss: it isolates the constraint's own dynamics (a task
loss adds a pull towards keeping units). Run: python benchmarks/target_ramp.py
"""

from __future__ import annotations

import argparse

from tlprune.gates import GateConfig, GateSet, Lagrangian, TargetSchedule, UnitSizes
from tlprune.gates.lagrangian import make_gate_optimizers

MINILM = UnitSizes(num_layers=6, num_heads=12, head_size=32, hidden=384, ffn=1536)


def trajectory(
    final: float, start: str, steps: int, warmup: int, lr: float, seed: int, init: float = 0.0
):
    gates, lagrangian = GateSet(GateConfig(init_log_alpha=init), MINILM, seed=seed), Lagrangian()
    gate_opt, lambda_opt = make_gate_optimizers(gates, lagrangian, lr)
    s0 = float(gates.expected_sparsity().detach())
    schedule = TargetSchedule(final, warmup, initial=min(s0, final) if start == "initial" else 0)
    out = []
    for step in range(steps):
        s_hat = gates.expected_sparsity().float()
        lagrangian(s_hat, schedule(step)).backward()
        for opt in (gate_opt, lambda_opt):
            opt.step()
            opt.zero_grad()
        gates.clamp_()
        out.append(float(s_hat.detach()))
    return s0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=180)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--init", type=float, default=0.0, help="initial log-alpha")
    args = ap.parse_args()
    marks = [100, args.warmup, 300, 450, args.steps - 1]
    print(
        f"expected sparsity at steps {marks} (warm-up {args.warmup}, lr {args.lr}, "
        f"init log-alpha {args.init})"
    )
    print(
        "| target | ramp from | s at start | "
        + " | ".join(map(str, marks))
        + " | max |s - t| after warm-up |"
    )
    print("|---" * (len(marks) + 4) + "|")
    for final in (0.6, 0.8, 0.9):
        for start in ("zero", "initial"):
            s0, traj = trajectory(final, start, args.steps, args.warmup, args.lr, 0, args.init)
            worst = max(abs(s - final) for s in traj[args.warmup :])
            cells = " | ".join(f"{traj[m]:.3f}" for m in marks)
            print(f"| {final} | {start} | {s0:.3f} | {cells} | {worst:.3f} |")


if __name__ == "__main__":
    main()
