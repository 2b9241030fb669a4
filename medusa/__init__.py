"""medusa: the model side of the workbench (backbone, heads, tree attention, decoding, training)."""
