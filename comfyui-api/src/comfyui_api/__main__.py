from comfyui_api.cli import main

main()
