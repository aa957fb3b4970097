"""The one error type callers catch: every refusal says why in words a person understands."""


class DeidError(ValueError):
    """A DICOM object that cannot be de-identified safely; `reason` is a short machine-usable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
