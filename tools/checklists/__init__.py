"""Guided second reads' data: the modality checklists and their regions (``catalogue``), and
the record of a read in progress (``record``), which the session stores."""
