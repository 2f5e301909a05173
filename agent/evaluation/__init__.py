"""The localisation benchmark behind ``loupe eval``: the manifest, scoring against the
centre-guess baseline, and simulated vision-model proposals."""
