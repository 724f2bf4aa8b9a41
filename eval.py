"""Evaluate a trained run: ``python eval.py --workdir runs/quickstart`` (``--help`` for more).

The command line lives in msjax/cli.py (also installed as ``msjax-eval``).
"""

if __name__ == "__main__":
    from msjax import cli

    cli.evaluate()
