"""User-facing errors. The CLI prints these as one line (`gptkit: error: ...`) and exits non-zero."""


class GptkitError(Exception):
    """A mistake in what the user asked for (bad path, bad flag, bad file), not a bug in gptkit."""


class CheckpointError(GptkitError):
    """A path that is not a loadable checkpoint, or a checkpoint that does not fit what it is used with."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and atomic write cleans up on the way out."""


class TrainError(GptkitError):
    """A training run that cannot start or continue as asked."""


class MachineTooSmall(TrainError):
    """A model or batch that cannot fit this machine's memory even at the least a training step needs."""
