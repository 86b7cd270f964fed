"""featstore: datasets, views and the teacher feature store — everything up to the stream a trainer reads.

The public API (each name imported on first use)::

    from featstore import ExtractConfig, extract_store, open_store, StoreStream, load_dataset

``extract_store`` runs a teacher once over a dataset into a chunked, compressed Zarr store (resumable, optionally on
dask workers); ``open_store`` reads one; ``StoreStream`` streams its rows in chunk-shuffled batches;
``verify_store``/``export_h5``/``import_h5`` check, export and import stores. Errors are the
:class:`FsdError` family of ``featstore.errors``.
"""

from featstore._lazy import lazy_exports

_EXPORTS = {
    "DaskExecutor": "featstore.extract",
    "ExtractConfig": "featstore.extract",
    "ExtractSummary": "featstore.store_lifecycle",
    "TeacherBinding": "featstore.teacher",
    "TeacherSource": "featstore.teacher",
    "extract_store": "featstore.extract",
    "extract_teacher": "featstore.extract",
    "extract_teacher_distributed": "featstore.dask_extract",
    "FeatureStore": "featstore.store",
    "StoreShape": "featstore.store",
    "create_store": "featstore.store",
    "open_store": "featstore.store",
    "store_exists": "featstore.store",
    "StoreStream": "featstore.stream",
    "GeneratedViews": "featstore.stream",
    "Dataset": "featstore.datasets",
    "ImageDataset": "featstore.datasets",
    "LoadOptions": "featstore.datasets",
    "load_dataset": "featstore.datasets",
    "load_eval_dataset": "featstore.datasets",
    "SpecQuery": "featstore.spec_query",
    "DATASETS": "featstore.datasets",
    "ViewPolicy": "featstore.views",
    "render_views": "featstore.views",
    "render_batches": "featstore.loader",
    "stream_views": "featstore.loader",
    "verify_store": "featstore.verify",
    "verify_live": "featstore.verify",
    "export_h5": "featstore.export",
    "import_h5": "featstore.importer",
    "FsdError": "featstore.errors",
    "InvalidInput": "featstore.errors",
    "StoreError": "featstore.errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
