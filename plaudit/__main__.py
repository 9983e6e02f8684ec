"""`python -m plaudit` and the `plaudit` command: the CLI lives on the server side
(`plaudit.service.cli`); a client-only install says which extra brings it."""
import sys

SERVER_SIDE = {"torch", "transformers", "bentoml", "yaml", "huggingface_hub", "peft", "safetensors", "accelerate",
               "prometheus_client", "starlette", "filelock", "rich", "math_verify"}  # the [serve] extra's imports


def main() -> None:
    from plaudit.service.cli import main as cli

    try:
        cli()
    except ModuleNotFoundError as e:  # a client-only install: no torch, bentoml, ...
        if (e.name or "").partition(".")[0] not in SERVER_SIDE:
            raise
        sys.exit(f"plaudit: this command needs the server side ({e.name} is not installed): "
                 "pip install 'plaudit[serve]' (add ,train for training, ,judge-local for the offline judge)")


if __name__ == "__main__":
    main()
