"""Speed: analytic MACs, interleaved latency, and the pruned-vs-dense benchmark."""

from tlprune.bench.flops import forward_macs
from tlprune.bench.latency import compare_latency, time_interleaved
from tlprune.bench.run import BenchConfig, bench, format_table

__all__ = [
    "BenchConfig",
    "bench",
    "compare_latency",
    "format_table",
    "forward_macs",
    "time_interleaved",
]
