"""The one training loop and the task objects that plug into it."""

from bitsound.train.loop import FitResult, fit
from bitsound.train.tasks import ClassificationTask

__all__ = ["ClassificationTask", "FitResult", "fit"]
