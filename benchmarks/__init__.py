"""fsd's benchmarks, one script per subject; run each from the repository root as ``python -m benchmarks.<name>``.

Throughput (figures → the marked block of ``RESULTS.md`` and ``run.json``):

* :mod:`benchmarks.run` — every section below in one run (``--quick`` for the smoke test);
* :mod:`benchmarks.training` (training step variants, amortisation), :mod:`benchmarks.stream`,
  :mod:`benchmarks.extraction` (incl. dask), :mod:`benchmarks.eval`;
* :mod:`benchmarks.harness` (timing, interleaving, machine info, synthetic data) and
  :mod:`benchmarks.report` (figures against goals, the RESULTS.md block) are what they share.

Measurements with their own ``RESULTS.md`` section or docs table: :mod:`benchmarks.tar_at_far`,
:mod:`benchmarks.eval_floor`, :mod:`benchmarks.store_dtypes`, :mod:`benchmarks.paper_table`,
:mod:`benchmarks.margin_heads`, :mod:`benchmarks.fashion_table`; :mod:`benchmarks.results_md` is how each writes
its part.

A new script follows the same rules: it runs as ``python -m benchmarks.<name>`` (its docstring's first
lines say so), imports ``benchmarks.*``, ``featstore`` and ``distill`` as packages (no ``sys.path`` edits;
a child process is started as ``[sys.executable, "-m", "benchmarks.<name>", …]`` with ``cwd`` the repository
root), times with :class:`benchmarks.harness.Clock` and builds synthetic inputs with the harness writers,
trains through ``StudentRun``/``train_student`` rather than its own loop, and writes only its own part of
``RESULTS.md`` or of a doc through :mod:`benchmarks.results_md` (``publish``, ``replace_section``,
``replace_marked``, ``write_json``: atomic writes).
"""
