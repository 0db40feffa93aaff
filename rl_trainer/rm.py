"""`python -m rl_trainer.rm [overrides]` (or under `torchrun --nproc_per_node N`): reward-model training.

configs/rm_trainer.yaml holds the keys (verl's RMDataset names: data.prompt_key / chosen_key / rejected_key);
rl_trainer/supervised/ the pairs, the Bradley-Terry loss and the loop it shares with rl_trainer.sft.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rl_trainer.supervised import cli
from rl_trainer.supervised.tasks import RewardModelTask


@hydra.main(config_path=cli.CONFIG_DIR, config_name="rm_trainer", version_base=None)
def main(cfg: DictConfig) -> None:
    cli.main(cfg, "rm_trainer", RewardModelTask())


if __name__ == "__main__":
    main()
