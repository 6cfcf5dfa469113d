"""Training, below the suites: the one training loop (:mod:`~lenbench.train.loop`) and the
data-parallel context a torchrun executor hands down to it (:mod:`~lenbench.train.parallel`)."""

from lenbench.train.loop import (
    Checkpointer,
    CompileClock,
    NonFiniteLoss,
    OptimConfig,
    Parallel,
    accumulate,
    lr_lambda,
    make_optimizer,
    train,
)

__all__ = ["Checkpointer", "CompileClock", "NonFiniteLoss", "OptimConfig", "Parallel", "accumulate",
           "lr_lambda", "make_optimizer", "train"]
