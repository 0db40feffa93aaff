"""`python -m rl_trainer.sft [overrides]` (or under `torchrun --nproc_per_node N`): supervised fine-tuning.

configs/sft_trainer.yaml holds the keys (verl 0.9.1's sft_trainer_engine names and the older fsdp_sft_trainer
spelling); rl_trainer/supervised/ the data, the loss and the loop it shares with rl_trainer.rm.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rl_trainer.supervised import cli
from rl_trainer.supervised.tasks import SFTTask


@hydra.main(config_path=cli.CONFIG_DIR, config_name="sft_trainer", version_base=None)
def main(cfg: DictConfig) -> None:
    cli.main(cfg, "sft_trainer", SFTTask())


if __name__ == "__main__":
    main()
