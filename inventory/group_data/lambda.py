"""Lambda: log in as ubuntu (sudo for system changes), data under the home directory, no block volume."""

provider = "lambda"
ssh_user = "ubuntu"
data_root = "/home/ubuntu/comfyfleet"
