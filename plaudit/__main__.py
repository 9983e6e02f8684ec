"""`python -m plaudit` and the `plaudit` command: the CLI lives on the server side
(`plaudit.service.cli`); a client-only install says which extra brings it."""
import sys


def main() -> None:
    try:
        from plaudit.service.cli import main as cli
    except ModuleNotFoundError as e:  # a client-only install: no torch, bentoml, ...
        sys.exit(f"plaudit: the command line needs the server side ({e.name} is not installed): "
                 "pip install 'plaudit[serve]' (add ,train for training, ,judge-local for the offline judge)")
    cli()


if __name__ == "__main__":
    main()
