"""Comparing a study with the patient's prior: bringing the prior into the current study's frame
(``registration``), then matching and measuring each finding in both."""
