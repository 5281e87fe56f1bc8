"""One error hierarchy for everything the user can get wrong.

Pages catch only :class:`ExplorerError` and show it with ``st.error``; the CLI turns it into
one line on stderr and exit code 2.  Anything else is a bug (exit code 1).
"""
from __future__ import annotations


class ExplorerError(Exception):
    """Base class of every error caused by the user's input or options.

    The message is a single line that names the file, tensor or field and says what is wrong.
    """


class InputError(ExplorerError):
    """A source, file or tensor cannot be used (missing, corrupt, wrong shape, NaN...)."""


class OptionError(ExplorerError):
    """An option has a value outside its allowed range."""


class MemberError(InputError):
    """One member of a family holds data that cannot be used (NaN or Inf, found while reading it).

    Header problems are caught when a family is loaded; this error is raised while tensor data
    is read, so the pipeline can leave the member out and name it (or refuse the family when
    ``strict``) instead of failing the whole analysis.

    Parameters
    ----------
    message : str
        The one-line message, naming the model, tensor and file.
    member : str
        Name of the model (``"base"`` for a family's base model, which is never skipped).
    path : str
        The file that holds the bad data.
    """

    def __init__(self, message: str, member: str, path: str):
        super().__init__(message)
        self.member = member
        self.path = path

    def __reduce__(self):  # picklable across processes (Dask workers), with its attributes
        return (type(self), (str(self), self.member, self.path))
