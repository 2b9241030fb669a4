"""trees: candidate trees as data, acceptance models, tree search, the cost model and tree drawings.

Model-free: it reads the tables the measuring side writes (`bench.calibrate`, `bench.latency`) and
imports only `common` and itself. Modules, lowest first: `tree` (the tree type, presets),
`acceptance_model` (independence, empirical and replay models), `cost` (latency profiles),
`inputs` (which tables a search reads), `best_first` (greedy and empirical-optimal trees),
`holdout` (cross-validated model errors), `baselines` (comparison trees), `optuna_search`
(hardware-aware and Pareto search), `confidence` and `dynamic` (per-step trees from calibrated
head confidence), `hybrid` (prompt-lookup chain + heads' tree as one node list),
`dynamic_replay` and `policy_replay` (per-step policies replayed on calibration text, the hybrid's
lookup/heads split), `plot` (drawings), `search` (the library entry and CLI).
"""

from trees.tree import Tree, TreeError, chain, dense, preset

__all__ = ["Tree", "TreeError", "chain", "dense", "preset"]
