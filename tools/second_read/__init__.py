"""Guided second reads: a modality checklist walked step by step with the clinician
(``flow``: the four tools), each step shown with Loupe's observations (``steps``), ending in a
concordance summary that can become a report addendum (``concordance``). The checklists and the
record of a read live in ``tools.checklists``."""
