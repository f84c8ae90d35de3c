"""Every error a user can cause and fix, in one place, and the one way several problems are reported together.

Entry points (`kit.config.run_main`) print a KitError as one message without a traceback and exit with status 2.
A check that can find several problems collects them all and raises once, through `KitError.of` (as torchtune's
`ConfigError` carries its list), so a user fixes a file in one pass instead of one error per run.
"""

from __future__ import annotations

MAX_LISTED = 20  # problems written into one message; the count says how many there were


class KitError(ValueError):
    """A problem the user caused and can fix. `problems`: each problem found, one string each (a single one for an
    error raised with a plain message)."""

    def __init__(self, message: str = "", problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]

    @classmethod
    def of(cls, where: str, problems: list[str], limit: int = MAX_LISTED) -> KitError:
        """'<where>: N problem(s):' and the first `limit` problems, one a line, then how many more there were."""
        listed = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        return cls(f"{where}: {len(problems)} problem(s):\n  {listed}{more}", problems)


class ConfigError(KitError):
    """A problem in the YAML file, on the command line, or in a question bank or frame file."""


class DataError(KitError):
    """A problem in the user's data.source."""


class EncodeError(KitError):
    """A row that cannot be trained on (too long, nothing supervised, a template that cannot render it)."""


class ModelNotFound(KitError):
    """A model (or tokenizer) that is not where the config says, or not reachable without a hub."""


class Busy(KitError):
    """Another live process is writing to this output_dir."""


class ExportError(KitError):
    """A merged model that cannot be written as the GGUF file or Modelfile asked for."""


class NativeCrash(KitError):
    """The child running native code was killed by a signal (`signal_name`: "SIGILL", "SIGKILL", ...) or ended
    without a result (`signal_name` None)."""

    def __init__(self, message: str, signal_name: str | None):
        super().__init__(message)
        self.signal_name = signal_name
