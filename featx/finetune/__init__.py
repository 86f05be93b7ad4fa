"""Fine-tune the last stages of a backbone plus a head, from a cached prefix.

  config    FineTuneConfig (the recipe) and RunOptions (where it runs)
  pipeline  fine_tune(): the prefix cache, the trainer and the export composed
  data      batches from the cache, map augmentation, class balance
  model     the trained stages of any family plus the head (TuneNet)
  train     optimiser, schedule, early stopping, checkpoints
  export    the fine-tuned model folder as a release
"""

from .config import FineTuneConfig, RunOptions
from .pipeline import fine_tune

__all__ = ["fine_tune", "FineTuneConfig", "RunOptions"]
