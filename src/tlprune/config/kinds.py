"""Names the config sections check against: gate kinds, prune methods, constraints."""

GATE_KINDS = ("head", "mha", "ffn_unit", "ffn", "hidden")
PRUNE_METHODS = ("gates", "fisher")
CONSTRAINTS = ("lagrangian", "shift", "hold")  # how the gates meet the target sparsity
