"""LwF's Trainer (its declaration: ``bir_keras.strategies.lwf``): replay the current batch
with soft targets from the model frozen at the end of the previous task."""

from __future__ import annotations

from bir_keras.strategies.records import Batch, Plan, StepContext
from bir_keras.strategies.replay import Replay, ReplayDraws, ReplayTrainer


class LwF(ReplayTrainer):
    """Replays the current inputs, labelled by the previous model."""

    def replay_batch(self, batch: Batch, draws: ReplayDraws, ctx: StepContext,
                     plan: Plan) -> Replay:
        """The current batch, with targets from the frozen model over its units (each
        sample counted for a drawn previous task)."""
        return self.label_replay(batch.x, draws.tasks, ctx)
