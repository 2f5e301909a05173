"""The clinical report: the versioned ``ClinicalReport`` document and its edit operations
(``document``), where findings are in words (``location``), and the Markdown, PDF and DICOM SR
exporters."""
