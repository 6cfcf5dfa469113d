"""Where and how cells run. Its modules import downwards only (``tests/test_imports.py`` checks it):

- bottom: :mod:`~lenbench.execute.cell` (:func:`~lenbench.execute.cell.run_cell_once`, the one-cell
  runner every executor goes through, and its :class:`~lenbench.execute.cell.Outcome`); a torchrun
  launch's ranks and collectives live below the suites (:mod:`lenbench.train.parallel`) and reach a
  cell through its ``RunContext``;
- beside them: :mod:`~lenbench.execute.status` (a grid's state read from its folders),
  :mod:`~lenbench.execute.tracking` (optional TensorBoard / W&B logging of a cell) and
  :mod:`~lenbench.execute.lifeline` (a worker process ends with its parent);
- above them, the executors: :mod:`~lenbench.execute.inprocess` (the default),
  :mod:`~lenbench.execute.pool` (a local worker pool), :mod:`~lenbench.execute.slurm` (a submitit job
  array) and :mod:`~lenbench.execute.torchrun` (data-parallel cells of suites that train that way);
- top: :mod:`~lenbench.execute.select` (``--executor`` name -> executor).

No module here names a suite: they loop over the registered :class:`lenbench.suites.base.Suite`
objects (docs/architecture.md).
"""
