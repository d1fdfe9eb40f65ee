"""Exceptions. ``UserError`` and its subclasses are mistakes a user can fix: the CLI prints them as one
message and exits with code 2. Anything else escaping is a bug in xaibench or a plugin."""

import errno


class XaibenchError(Exception):
    """Base class of every error xaibench raises on purpose."""


class UserError(XaibenchError):
    """A mistake in a grid, an argument or the data on disk; the message says what, where and what to do."""


class GridError(UserError):
    """A grid file that cannot be read or does not validate."""


class NotFetched(UserError):
    """Raised by a component's ``check(fetch=False)`` (a dry run, which downloads nothing) for something a
    real run would download first: the message says what is missing, where it would go and where from."""


class UnknownComponentError(UserError):
    """A component name that no plugin registered."""


class ComponentParamsError(UserError):
    """Parameters a component does not accept, or of the wrong type or range.

    ``problems`` is a list of ``(parameter, message)`` pairs so callers can point at each one."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {msg}" for where, msg in self.problems))


class PluginError(XaibenchError):
    """A plugin that breaks the plugin contract (duplicate names, hooks matching no spec, bad factories)."""


class StageError(XaibenchError):
    """A stage that failed while running; carries the stage key and the original traceback text."""

    def __init__(self, message, *, key=None, traceback_text=None):
        super().__init__(message)
        self.key = key
        self.traceback_text = traceback_text


class ContractViolation(XaibenchError):
    """A component's output that breaks its kind's contract (``xaibench.kit.contracts``): the message says what
    was wrong, e.g. "3 of 9 points outside the 32×32 image, e.g. (42.5, 51.5)"."""


class ComponentError(XaibenchError):
    """A component that raised, or broke its contract, while a stage called it.

    ``component`` names it (kind, name, plugin, distribution and version); ``message`` is what went wrong,
    with the input it was given where that helps; ``user_error`` is True when the component raised a
    ``UserError`` (missing weights, bad data on disk): something the user can fix, not a bug."""

    def __init__(self, component: str, message: str, *, user_error: bool = False):
        super().__init__(f"{component}: {message}")
        self.component = component
        self.message = message
        self.user_error = user_error


class WorkerLost(XaibenchError):
    """What an executor yields in place of a task's result when the worker running that task died (killed,
    or out of memory): the task failed, the other tasks go on."""


# What libraries say when they wrap the OS's out-of-space error in their own (safetensors, sqlite).
_OUT_OF_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def out_of_space(exc: BaseException) -> str | None:
    """What says the disk is full behind ``exc`` (itself, or what caused it), or None: an ``OSError`` with
    ``ENOSPC`` or ``EDQUOT``, or a library's error whose text says so. A full disk is the machine's fault,
    not a bug or the user's mistake: the work is retried once space is freed."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if any(text in str(exc) for text in _OUT_OF_SPACE_TEXTS):
            return f"{type(exc).__name__}: {exc}"
        exc = exc.__cause__ or exc.__context__
    return None
