"""The `comfyfleet` command line: a thin typer layer over the library.

Each module here registers its commands on the main app and does nothing but parse
flags, call library functions and print. Library code never imports typer.
"""
