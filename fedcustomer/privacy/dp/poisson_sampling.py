"""Poisson batches for DP-SGD: the geometric sampler and the loader that serves its batches.

Why this module: DP-SGD's accounting assumes every row joins each batch independently with
probability q. :class:`GeometricPoissonSampler` draws exactly those batches from geometric gaps
(much cheaper than one uniform per row); :class:`GeometricDPDataLoader` serves them as whole
tensors inside Opacus's ``DPDataLoader`` contract (empty batches included). Used by
:mod:`fedcustomer.privacy.dp.dpsgd` and by the distributed step in
:mod:`fedcustomer.privacy.dp.distributed`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from opacus.data_loader import DPDataLoader, dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset


class TensorPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(X, y) rows; ``__getitems__`` slices a whole batch at once instead of row by row."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.X.device)
        return self.X.index_select(0, idx), self.y.index_select(0, idx)


def whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for a batch fetched whole by ``TensorPairs.__getitems__``: already two tensors."""
    return batch


class GeometricPoissonSampler(UniformWithReplacementSampler):  # type: ignore[misc]  # Opacus is untyped
    """Opacus's Poisson sampler, drawn by geometric gaps instead of one uniform per row.

    Same contract as ``UniformWithReplacementSampler``: each of ``steps`` (default
    ``int(1 / sample_rate)``) batches holds every row independently with probability
    ``sample_rate``. Independent Bernoulli(q) inclusions are exactly a sequence of
    Geometric(q) gaps between included rows, so drawing ~``n q`` gaps gives the same
    distribution as ``n`` uniforms at a fraction of the cost (the uniforms alone took
    as long as a whole non-private step of a logistic regression). Yields index tensors.
    """

    def __iter__(self) -> Iterator[torch.Tensor]:
        n, q, steps = self.num_samples, self.sample_rate, self.steps
        if q >= 1.0:
            for _ in range(steps):
                yield torch.arange(n)
            return
        # All of the epoch's gaps in one draw: row i holds batch i's included positions.
        chunk = self._chunk()
        gaps = torch.empty((steps, chunk), dtype=torch.float64).geometric_(q, generator=self.generator)
        positions = gaps.cumsum_(1).sub_(1.0)
        inside = positions < n
        counts = inside.sum(1).tolist()
        batches = torch.split(positions[inside].long(), counts)
        for i, batch in enumerate(batches):
            if counts[i] < chunk:
                yield batch
            else:  # ran out of gaps before the end of the data (rare): keep drawing
                yield torch.cat([batch, self._positions_after(float(positions[i, -1]))])

    def draw(self) -> torch.Tensor:
        """Indices of one Poisson batch, sorted ascending."""
        if self.sample_rate >= 1.0:
            return torch.arange(self.num_samples)
        return self._positions_after(-1.0)

    def _chunk(self) -> int:
        mean = self.num_samples * self.sample_rate
        return int(mean + 6.0 * math.sqrt(mean * (1.0 - self.sample_rate)) + 16)

    def _positions_after(self, last: float) -> torch.Tensor:
        """Included positions in (last, n), by geometric gaps starting after ``last``."""
        n, chunk, parts = self.num_samples, self._chunk(), []
        while True:
            gaps = torch.empty(chunk, dtype=torch.float64).geometric_(
                self.sample_rate, generator=self.generator
            )
            positions = gaps.cumsum_(0).add_(last)
            inside = int(torch.searchsorted(positions, float(n)))
            parts.append(positions[:inside])
            if inside < chunk:
                return torch.cat(parts).long()
            last = float(positions[-1])


class GeometricDPDataLoader(DPDataLoader):  # type: ignore[misc]  # Opacus is untyped
    """Opacus's DPDataLoader (empty-batch collate included) over :class:`GeometricPoissonSampler`."""

    def __init__(self, dataset: TensorPairs, *, sample_rate: float, generator: torch.Generator) -> None:
        first = dataset[0]
        self.sample_rate = sample_rate
        self.distributed = False
        DataLoader.__init__(
            self,
            dataset,
            batch_sampler=GeometricPoissonSampler(
                num_samples=len(dataset), sample_rate=sample_rate, generator=generator
            ),
            collate_fn=wrap_collate_with_empty(
                collate_fn=whole_batch,
                sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                dtypes=[dtype_safe(x) for x in first],
            ),
            generator=generator,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # In-process, whole-batch fetch without DataLoader's per-batch worker/pinning machinery
        # (about 10 us a batch, 5 % of a logistic-regression step). The sampler yields index
        # tensors, and an empty index selects (0, ...)-shaped tensors of the right dtypes: the
        # empty-batch shapes Opacus's collate wrapper would build.
        X, y = self.dataset.X, self.dataset.y
        device = None if X.device.type == "cpu" else X.device
        for indices in self.batch_sampler:
            idx = indices if device is None else indices.to(device)
            yield X.index_select(0, idx), y.index_select(0, idx)
