"""Errors a reader can act on.

Every error the package raises on bad input is a ``ValueError`` subclass whose message says what was wrong
and how to fix it.
"""


class LlavaNbError(ValueError):
    """Base class of every bad-input error raised by ``llava_nb``."""


class UnknownModelError(LlavaNbError, KeyError):
    """A model name that is neither a known name, an alias nor a local checkpoint folder."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""


class UnknownMethodError(LlavaNbError):
    """A training method name that the function does not know."""


class InvalidSizeError(LlavaNbError):
    """A non-positive or malformed image size."""


class ImageTokenMismatchError(LlavaNbError):
    """A prompt whose ``<image>`` tokens cannot match the image features the model will produce."""


class ProfileError(LlavaNbError):
    """An unknown execution profile."""


class TrainingError(RuntimeError):
    """A training process failed; the message carries each failed process's own error, ``files`` the
    ``error-rank<N>.txt`` files that also hold its traceback."""

    def __init__(self, message: str, files=()):
        super().__init__(message)
        self.files = [str(f) for f in files]
