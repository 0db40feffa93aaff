"""Supervised training: SFT (`python -m rl_trainer.sft`) and reward models (`python -m rl_trainer.rm`).

    data.py    demonstrations and preference pairs from parquet, tokenized (both SFT spellings, chat templates)
    tasks.py   the two tasks: next-token loss on trained tokens, Bradley-Terry on pairs
    loop.py    the one loop both run: batches, micro-batches, FSDP2, optimizer, validation, checkpoints, resume
    cli.py     config checks and data loading before anything starts, one-line errors
"""
