"""--send-secret: the secret in a worker plugin, over TLS only; apart, so that loading the secret's own
module does not load Dask."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from .secret import fingerprint, hold, release


class SendSecret(WorkerPlugin):
    """Carries the secret to every worker, also ones that join later (--send-secret, over TLS only)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.name = f"dicom-deid-secret-{fingerprint(key)}"

    def __repr__(self) -> str:
        return f"SendSecret({fingerprint(self.key)})"

    def setup(self, worker) -> None:
        hold(self.key)

    def teardown(self, worker) -> None:
        release(self.key)
