"""Every name a run logs, in one place: the LightningModules and callbacks log under these names, and the tools
that read runs take them from here (`scripts/wandb_dashboard.py` builds its panels from these lists, so a panel
can only show a metric the runs log). Users and dashboards rely on them: changing one is a breaking change.
"""
from __future__ import annotations

TRAIN_LOSS, TRAIN_ACC, TRAIN_STAGE = "train/loss", "train/acc", "train/stage"
VAL_LOSS, VAL_ACC, VAL_PPL, VAL_PPL_CACHE = "val/loss", "val/acc", "val/ppl", "val/ppl_cache"
TEST_LOSS, TEST_ACC, TEST_ACC_TTA = "test/loss", "test/acc", "test/acc_tta"
TEST_PPL, TEST_PPL_CACHE = "test/ppl", "test/ppl_cache"
ELAPSED_S, EPOCH_S = "time/elapsed_s", "time/epoch_s"  # callbacks.ElapsedTime, every task

# What each kind of model logs: curves during training (per step or per epoch), and the test values at the end.
# val/ppl_cache is logged only with `cache_in_validation: true`, so it is not among the curves every run has.
IMAGE_CURVES = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC)
IMAGE_TESTS = (TEST_ACC, TEST_ACC_TTA)
STAGED_CURVES = (TRAIN_STAGE,)  # fine-tuning stages (Stanford Cars)
LANGUAGE_CURVES = (TRAIN_LOSS, VAL_LOSS, VAL_PPL)
LANGUAGE_TESTS = (TEST_PPL, TEST_PPL_CACHE)
TIME_CURVES = (ELAPSED_S, EPOCH_S)

# Lightning's LearningRateMonitor (every task config has it): `lr-<optimizer class>`, with `/pg<k>` when the
# optimizer has several parameter groups (the fine-tuning stages, Muon's two sides), then `-momentum` (Adam's beta1,
# cycled by the 1cycle) or `-weight_decay` appended: `lr-AdamW`, `lr-Adam/pg2-momentum`. As regular expressions,
# because the class name is the config's choice (class names hold no "-", so the three never overlap).
SCHEDULES = {
    "learning rate": r"^lr-\w+(/pg\d+)?$",
    "beta1 (momentum)": r"^lr-\w+(/pg\d+)?-momentum$",
    "weight decay": r"^lr-\w+(/pg\d+)?-weight_decay$",
}

# W&B config entries naming the optimizer and the schedule in one word each (`cli_loggers.py` sets them, with the
# same words as the run's tags), so runs can be grouped by them: W&B groups by a config value, not by one tag.
OPTIMIZER_TAG, SCHEDULE_TAG = "optimizer_tag", "schedule_tag"
