"""fsd's benchmarks, one script per subject; run each from the repository root as ``python -m benchmarks.<name>``.

Throughput (figures → the marked block of ``RESULTS.md`` and ``run.json``):

* :mod:`benchmarks.run` — every section below in one run (``--quick`` for the smoke test);
* :mod:`benchmarks.training` (training step variants, amortisation), :mod:`benchmarks.stream`,
  :mod:`benchmarks.extraction` (incl. dask), :mod:`benchmarks.eval`;
* :mod:`benchmarks.harness` (timing, interleaving, machine info, synthetic data) and
  :mod:`benchmarks.report` (figures against goals, the RESULTS.md block) are what they share.

Measurements with their own ``RESULTS.md`` section or docs table: :mod:`benchmarks.tar_at_far`,
:mod:`benchmarks.eval_floor`, :mod:`benchmarks.store_dtypes`, :mod:`benchmarks.paper_table`,
:mod:`benchmarks.margin_heads`; :mod:`benchmarks.results_md` is how each writes its part.
"""
