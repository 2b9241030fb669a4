"""Medusa head training, stage 1 (Medusa-1) and stage 2 (Medusa-2); run as `python -m medusa.train`.

Modules, each importing only those above it in this list (no circles):

- `config`       CommonTrainConfig, TrainConfig (stage 1), Stage2Config: every default once
- `losses`       head targets, the decay-weighted Medusa loss, ProjectedHeads, top-k accuracy
- `schedule`     cosine learning rate, seeded batches and held-out subsets (pure functions of the step)
- `inputs`       checks that distilled data and heads fit the backbone; the data summary
- `record`       training_record.json with its provenance block; `upgrade_training_record`
- `cache`        stage 1's hidden-state cache (the frozen backbone runs once)
- `stage1`       Medusa-1: heads on cached hidden states, checkpoints and resume
- `stage2_model` Medusa-2's model (LoRA or full backbone + heads), batches, optimiser groups
- `drift`        how far Medusa-2 moved the backbone
- `stage2`       Medusa-2's training loop and outputs
- `cli`          the command line (`__main__` runs it)

This package file imports nothing, so `medusa.train.record` can be read without loading torch.
"""
