"""User-facing errors: each message says what went wrong and what to do about it."""


class SpiritLMError(Exception):
    """Base class for errors that are shown to the user as one clear line."""


class CheckpointError(SpiritLMError):
    """A checkpoint file is missing, unreadable or does not match what the code expects."""


class AudioError(SpiritLMError):
    """Input audio cannot be used (not audio, empty, too short, bad channel choice)."""


class TokenStringError(SpiritLMError):
    """A unit string or unit dictionary is malformed."""


class InvalidArgumentError(SpiritLMError):
    """An argument is out of range (unknown speaker, bad modality, ...)."""
