"""Comparing the current study with a prior, at the level of findings: each current finding
carried to the prior and looked for there (``carry``). The engines underneath — registration,
slice matching, the change rules — are in ``tools.compare``."""
