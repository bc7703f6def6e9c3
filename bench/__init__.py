"""asyncdrive's benchmark suite: ``python -m bench`` measures, prints and records.

One module per benchmark (``bench/<name>.py``), each exporting ``BENCHMARK``, a
`bench.harness.Benchmark` whose ``run(ctx)`` returns a `bench.harness.Result`; the registry
is the tuple in ``bench/__main__.py``. Everything they share lives in ``bench/harness.py``:
the private server, the temporary root, worker processes that never outlive the run, the
statistics, the machine description, and the rendering of the terminal table, of
``bench/results/latest.json`` and of ``BENCHMARKS.md``.

Speed is never asserted: a benchmark measures and reports, with any target shown as
pass/miss next to the figures.
"""
