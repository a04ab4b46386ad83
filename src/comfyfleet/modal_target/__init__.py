"""The Modal target: the workflows' manifest as one readable Modal app file, deployed and verified.

- :mod:`.generate` writes the app file (image, model volume, download function, API service).
- :mod:`.modal_cli` runs the ``modal`` command line (deploy, run, stop, status) and reads its output.
- :mod:`.deploy` is the whole path: secrets, ``modal deploy``, model volume, /health, one
  generation per workflow.
"""
