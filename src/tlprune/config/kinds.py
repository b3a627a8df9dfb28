"""Names the config sections check against: gate kinds, prune methods."""

GATE_KINDS = ("head", "mha", "ffn_unit", "ffn", "hidden")
PRUNE_METHODS = ("gates", "fisher")
