"""The hospital's PACS over DICOMweb: search studies (QIDO-RS), retrieve them into Loupe's data
folder (WADO-RS) and store results back (STOW-RS), through ``dicomweb-client``.

Patient names and ids in search results are for the clinician's eyes only: they are never
logged, stored in a session, or put in a prompt.
"""
