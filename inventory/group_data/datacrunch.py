"""DataCrunch / Verda: log in as root; the block volume holds ComfyUI, its models and outputs."""

provider = "datacrunch"
ssh_user = "root"
block_device = "auto"
block_mount = "/mnt/data"
data_root = "/mnt/data/comfyfleet"
