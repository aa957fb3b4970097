"""What our own processes need not load: pandas, which pyarrow imports at every conversion of Python values
until it has it, only to recognise pandas values the pipeline never hands it (0.4-0.7 s of start)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class _NoPandas:
    """Finds nothing for pandas: importing it fails as if it were not installed."""

    def find_spec(self, name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is blocked in the pipeline's processes (pipeline/startup.py)",
                                      name=name)
        return None


def block_pandas() -> Callable[[], None]:
    """From now on pandas cannot be imported in this process (unless it already was), so pyarrow converts
    Python values without it, to the same arrays; returns what lifts the block. Only in processes the
    pipeline owns (the command, the embedded cluster's workers), never around a person's own code."""
    if "pandas" in sys.modules:  # loaded already: nothing to save
        return lambda: None
    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)
    return lambda: sys.meta_path.remove(blocker)


@contextmanager
def without_pandas() -> Iterator[None]:
    """pandas blocked for the duration (see `block_pandas`)."""
    lift = block_pandas()
    try:
        yield
    finally:
        lift()
