"""ComfyUI's real frontend in headless Chromium as the authority on UI→API conversion (see frontend.py)."""
