"""The known errors: failures a user can fix, each with a message that names the file, the item
or the option and says what to do.  The command line prints them as one line
(``<command>: error: <message>``, exit 1; ``cli/common.py``); anything else is a bug and keeps
its traceback.

    KnownError
      DataError          bad input data (a manifest, a feature store, a dictionary, a media file)
        CheckpointError  a checkpoint that cannot be loaded safely, or belongs to other data
        OptionError      an option value out of range or malformed, a device that is not there
          GeneratorError a decoding option or a model the chosen generator cannot decode
      OutputError        where a command writes: an input, a file it did not make, a folder that
                         is missing or not writable, a disk that fills up
      MetricUnavailable  a scorer that cannot run here (no Java, SPICE without its jars)

``Terminated`` is SIGTERM raised as an exception (a ``KeyboardInterrupt``), so that the same
clean-up runs as for Ctrl-C.  This module imports nothing of the package.
"""


class KnownError(Exception):
    """A failure the user can fix; its message is printed as one line."""


class DataError(KnownError, ValueError):
    """Bad input data: the message names the file and the item."""


class CheckpointError(DataError):
    """A checkpoint that is empty, truncated, not a checkpoint, carries code, or belongs to other data."""


class OptionError(DataError):
    """An option value out of range or malformed, or a device that is not there: the message names it."""


class GeneratorError(OptionError):
    """A decoding option, or a model the chosen generator cannot decode."""


class OutputError(KnownError):
    """An output location that is an input, holds a file the command did not make, is missing or not
    writable, or filled up while writing; nothing is left under the output's name."""


class MetricUnavailable(KnownError, RuntimeError):
    """A metric that cannot be computed here (e.g. no Java, or SPICE without its jars)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the clean-up of Ctrl-C runs."""

    exit_status = 143
