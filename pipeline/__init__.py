"""dicom-deid: de-identify DICOM archives with a Dask graph; `pipeline.run` is the whole job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import RunResult, run

__all__ = ["RunResult", "run"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import pipeline.deid` stays free of Dask and Parquet.
    if name in __all__:
        from . import job

        return getattr(job, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
