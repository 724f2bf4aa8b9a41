"""msjax: multiscale gradient estimation (MGE) for image-reconstruction CNNs in JAX/Flax.

    import msjax
    run = msjax.load_run("runs/quickstart")      # best checkpoint, ready to restore images
    restored = run.restore(corrupted)            # HWC or NHWC in, float32 in [0, 1] out

Submodules import JAX; ``import msjax`` alone does not, so tools that only read run logs stay fast.
"""

__version__ = "0.1.0"
__all__ = ["load_run", "train_and_evaluate"]


def __getattr__(name):
    if name == "load_run":
        from msjax.runs import load_run
        return load_run
    if name == "train_and_evaluate":
        from msjax.train import train_and_evaluate
        return train_and_evaluate
    raise AttributeError(f"module 'msjax' has no attribute {name!r}")
