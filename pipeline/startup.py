"""What the command's process need not load: pandas, which pyarrow imports at every conversion of Python
values until it has it, only to recognise pandas values the pipeline never hands it (0.4-0.7 s of start)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _NoPandas:
    """Finds nothing for pandas: importing it fails as if it were not installed."""

    def find_spec(self, name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is not loaded by the dicom-deid command (pipeline/startup.py)",
                                      name=name)
        return None


@contextmanager
def without_pandas() -> Iterator[None]:
    """Inside, pandas cannot be imported (unless it already was), so pyarrow converts Python values without
    it, to the same arrays; for processes the pipeline owns, never around a person's own code."""
    if "pandas" in sys.modules:  # loaded already: nothing to save
        yield
        return
    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
