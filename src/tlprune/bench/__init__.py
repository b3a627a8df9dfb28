"""Speed: analytic MACs and interleaved latency of pruned vs dense models."""

from tlprune.bench.flops import forward_macs
from tlprune.bench.latency import compare_latency

__all__ = ["compare_latency", "forward_macs"]
