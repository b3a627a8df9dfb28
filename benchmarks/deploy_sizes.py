"""Size on disk and test accuracy of deployable variants against the dense model as users
ship it today (fp32 safetensors, ONNX fp32 and ONNX Runtime dynamic int8), in one table;
the exported variants include torch's dynamic int8 (TorchScript model.int8.pt).

    python benchmarks/deploy_sizes.py DENSE_DIR EXPORT_DIR [EXPORT_DIR ...] [--save FILE.md]

DENSE_DIR: the dense fine-tuned model (e.g. a `tlprune finetune` output); EXPORT_DIR: what
`tlprune export RUN --trim-vocab --int8 --onnx --out EXPORT_DIR` wrote (its
export_report.json holds the variants' sizes and test accuracy, measured at export).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def dense_sizes(dense_dir: Path) -> dict[str, int]:
    """Bytes of the dense model as safetensors, ONNX fp32 and ONNX int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tlprune.surgery import export_module
    from tlprune.surgery.save import load_any

    model, _ = load_any(dense_dir)
    out = {"model.safetensors": (dense_dir / "model.safetensors").stat().st_size}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_module(model, Path(tmp) / "model.onnx")
        quantize_dynamic(fp32, Path(tmp) / "model.int8.onnx", weight_type=QuantType.QInt8)
        for name in ("model.onnx", "model.int8.onnx"):
            out[name] = (Path(tmp) / name).stat().st_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dense", type=Path)
    ap.add_argument("exports", type=Path, nargs="+")
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    dense = dense_sizes(args.dense)
    ref = dense["model.safetensors"]
    lines = [
        f"dense: {args.dense}; sizes in MB (10^6 bytes), ratio = dense fp32 safetensors / size",
        "",
        "| model | file | MB | smaller than dense fp32 | test accuracy |",
        "|---|---|---|---|---|",
    ]
    dense_acc = json.loads((args.dense / "metrics.json").read_text())["test"]["accuracy"]
    for name, size in dense.items():
        acc = f"{100 * dense_acc:.2f}" if name == "model.safetensors" else "-"
        lines.append(f"| dense | {name} | {size / 1e6:.1f} | {ref / size:.1f}x | {acc} |")
    per_file: dict[str, list[float]] = {}
    for d in args.exports:
        r = json.loads((d / "export_report.json").read_text())
        run = json.loads((Path(r["from"]) / "prune_report.json").read_text())
        lines.append(
            f"| {d.name} (untrimmed fp32) | model.safetensors | - | - | "
            f"{100 * run['test']['accuracy']:.2f} |"
        )
        for name in ("model.safetensors", "model.onnx", "model.int8.onnx", "model.int8.pt"):
            if name in r["files"]:
                size, acc = r["files"][name], r["test_accuracy"].get(name)
                per_file.setdefault(name, []).append(acc - run["test"]["accuracy"])
                lines.append(
                    f"| {d.name} (trimmed) | {name} | {size / 1e6:.1f} | {ref / size:.1f}x | "
                    f"{100 * acc:.2f} |"
                )
    lines += ["", "test accuracy change against the untrimmed fp32 pruned model, mean over runs:"]
    for name, diffs in per_file.items():
        lines.append(f"- trimmed {name}: {100 * np.mean(diffs):+.2f} points (n={len(diffs)})")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text)


if __name__ == "__main__":
    main()
