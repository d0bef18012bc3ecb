"""Error types raised by the core. Every message names the file and the problem."""

from __future__ import annotations


class CryoPickerError(Exception):
    """Base class: a problem the user can fix; its message is shown as is."""


class TomogramError(CryoPickerError):
    """A tomogram file cannot be read or written."""


class PicksFormatError(CryoPickerError):
    """A picks file cannot be read or written in the requested format."""


class ModelError(CryoPickerError):
    """A model checkpoint is missing, foreign, tampered with or incompatible."""


class Cancelled(CryoPickerError):
    """A long operation was cancelled by the user."""


class CryoPickerWarning(UserWarning):
    """Something was fixed up on input (rescaled, ignored, assumed); the message says what."""
