"""The paper's analysis of a run (Sections 4.2, 4.3 and 5.1), one module per part:

* ``analyze_run``: ``analyze_run(run_dir)`` and ``classify_split``: the orchestration, which
  writes ``analysis.json`` and ``figures/``;
* ``measure``: Table 4's cross-validated errors, eq. (2)'s sparsity, Section 5.1's
  compression (``caffe_cae.inspect``'s rule), the raw-pixel reference row;
* ``classify``: MATLAB's ``classify()`` and ``patternnet`` + ``trainscg`` as the paper ran
  them; ``scg``: the scaled conjugate gradient they train with;
* ``readers``: the run's files, checked; ``figures``: Figs. 4-11 and the others (matplotlib);
  ``netdraw``: the net diagram of Figs. 2-3 (graphviz);
* ``benchmark``: the whole analysis of a 10000 x 30 run, timed (``caffe-cae bench``).
"""
