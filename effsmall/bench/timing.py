"""The timing functions the suites use: :mod:`effsmall.measure`'s, with the run's number of
interleaved rounds (``$EFFSMALL_BENCH_ROUNDS``) as the default."""
from effsmall.bench.common import benchmark_rounds, compare, rounds_default
from effsmall.measure import benchmark, host_time, peak_memory

__all__ = ["benchmark", "benchmark_rounds", "compare", "host_time", "peak_memory", "rounds_default"]
