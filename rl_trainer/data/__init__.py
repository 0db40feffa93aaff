"""Datasets: public datasets in verl's parquet schema, the bundled GSM8K copy, the digit-shift task, the prompt
dataset and its resumable loader."""

# data.truncation: what to do with a prompt over data.max_prompt_length (here so the config checks need no datasets).
TRUNCATION_MODES = ("error", "left", "right", "middle")
