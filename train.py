"""Train a model: ``python train.py --config configs/quickstart.py`` (``--help`` for more).

The command line lives in msjax/cli.py (also installed as ``msjax-train``).
"""

if __name__ == "__main__":
    from msjax import cli

    cli.train()
