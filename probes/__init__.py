"""Trained heads on frozen dense features: linear segmentation probes and a small referring head.

    >>> from probes import LinearProbe, train_probes, load_samples
    >>> result = train_probes(load_samples(ds, cache, "train"), load_samples(ds, cache, "val"), ds.class_names)
    >>> result.best.predict(fmap)            # int32 label map [H, W] at the original resolution

``probes`` reads dense's core (features, cache, datasets, metrics); dense's evaluators, CLI and demo read ``probes``.
"""

from probes.linear import LinearProbe
from probes.train import ProbeConfig, Sample, SweepResult, load_samples, train_probes

__all__ = ["LinearProbe", "ProbeConfig", "Sample", "SweepResult", "load_samples",
           "train_probes"]
