"""Evaluation of a pretrained backbone, frozen: presets, restore, features, protocols.

Modules, in the order a job uses them:

* :mod:`ssljax.eval.config` -- the presets of the papers' protocols, overrides, validation;
* :mod:`ssljax.eval.restore` -- the online backbone of a run's newest intact checkpoint;
* :mod:`ssljax.eval.features` -- features of a whole split (shared with training's kNN
  monitor) and their cache;
* :mod:`ssljax.eval.linear`, :mod:`ssljax.eval.knn` -- the protocols;
* :mod:`ssljax.eval.protocols` -- the job: protocol, diagnostics, results written.

``python -m ssljax.evaluate`` is the command line over them. Nothing here imports
:mod:`ssljax.train`: evaluation builds the backbone from the config alone, without the Siamese
network or the optimizer of a run (``tests/test_eval_package.py`` checks it).
"""
