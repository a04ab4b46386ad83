"""comfyfleet: ComfyUI workflows to pinned, verified deployments on GPU hosts and Modal."""

__version__ = "0.1.0"
