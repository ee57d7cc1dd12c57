"""ssljax's training inputs, step by step, for the PyTorch reference (``--inputs_from_ssljax``).

The reference normally draws its own data order and augmentations (a ``DataLoader`` over the
JPEG folder, torchvision-style transforms). Fed by :class:`SsljaxInputs` instead, it trains on
the views ``ssljax.main`` trains on for the same config and seed: the batches of ssljax's
loader (``ssljax.train.make_train_loader``, the very loader ``ssljax.main`` builds) augmented
by ssljax's on-device augmentation with the key of the train step, ``fold_in(state.rng, k)``
at step ``k`` (``ssljax.train.make_train_step``). Together with ``--init_from_ssljax`` a
reference run then differs from ssljax's run of that seed in the implementation of the train
step alone, which separates "ssljax's step" from "ssljax's inputs" as the cause of a
difference between the two.

JAX runs in the reference's process here (on the CPU): create :class:`SsljaxInputs` after any
``DataLoader`` has forked its workers.
"""

from __future__ import annotations

from typing import Any


class SsljaxInputs:
    """An endless iterator of ``(view1, view2, labels)``: ssljax's training views, as torch.

    Step ``k`` (0-based, the ``k``-th item) is the ``k``-th batch of ssljax's training loader
    augmented with ``fold_in(rng, k)``, ``rng`` the train stream key of
    ``ssljax.train.init_state(comps, config, PRNGKey(config.seed))``; views are float32
    ``[B, 3, H, W]`` (normalised, as ssljax's network receives them), labels int64 ``[B]``.
    """

    def __init__(self, config: Any):
        """Builds ssljax's loader and the step's augmentation for ``config``.

        Args:
          config: the run's config; ``config.data`` must name the prepared dataset ssljax trains
            on (``data.root`` / ``data.data_dir`` of the ssljax run) and ``config.seed`` its seed.

        Raises:
          ValueError: the dataset is not prepared (ssljax's message says how to prepare it).
        """
        import jax

        from ssljax import data, train

        info = data.get_dataset_info(config.data)
        num_train = info.split_sizes[config.data.train_split]
        comps = train.build_components(config, info, num_train_examples=num_train)
        # The key of the train stream exactly as main's state holds it (init_state splits it).
        rng = train.init_state(comps, config, jax.random.PRNGKey(config.seed)).rng
        self._augment = jax.jit(
            lambda k, images: comps.augment_fn(jax.random.fold_in(rng, k), images)
        )
        self._loader = train.make_train_loader(config)
        self.num_train, self.steps_per_epoch = num_train, comps.steps_per_epoch
        self._step = 0

    def __iter__(self) -> SsljaxInputs:
        return self

    def __next__(self):
        import numpy as np
        import torch

        batch = next(self._loader)
        views = self._augment(np.int32(self._step), batch["image"])
        self._step += 1
        v1, v2 = (torch.from_numpy(np.array(v, np.float32)).permute(0, 3, 1, 2) for v in views)
        return v1, v2, torch.from_numpy(np.asarray(batch["label"], np.int64))
