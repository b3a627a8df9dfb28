"""Names the config sections check against: gate kinds, prune methods, constraints,
selection rules."""

GATE_KINDS = ("head", "mha", "ffn_unit", "ffn", "hidden")
PRUNE_METHODS = ("gates", "fisher")
CONSTRAINTS = ("lagrangian", "shift", "hold", "price")  # how the gates meet the target sparsity
# which best state a fine-tune keeps: lowest dev loss, or dev loss + held-out KL to the teacher
SELECT_RULES = ("dev_loss", "agreement")
