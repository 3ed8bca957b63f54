"""Training: the engine (one loop), its callbacks, the method table, the factory, the
history and the checkpoint format.

    engine = rnnfast.train.build("SGD-CR", task=task, hidden=50, seed=0)
    result = engine.fit(task, max_updates=100_000,
                        callbacks=[Validation(task, every=1000, success_error=0.01)])
"""

from .callbacks import Callback, Checkpoint, Every, Progress, Validation
from .checkpoint import load_checkpoint, save_checkpoint
from .engine import BatchList, DataSource, Engine, TaskStream, TrainResult
from .factory import build, build_model
from .history import History, HistoryWriter, write_history
from .methods import METHODS, Method, canonical_method

__all__ = ["Callback", "Checkpoint", "Every", "Progress", "Validation", "load_checkpoint",
           "save_checkpoint", "BatchList", "DataSource", "Engine", "TaskStream", "TrainResult",
           "build", "build_model", "History", "HistoryWriter", "write_history", "METHODS", "Method",
           "canonical_method"]
