"""The paper-reproduction experiments behind ``benchmarks/paper_experiments.py`` (not part of selconv).

Read in this order:

- ``settings``: protocols, masks, sweeps, baselines, phase names and the paper's own numbers;
- ``options``: the command line;
- ``protocols``: the data (both query protocols of the Oxford subset, the generic training photos), the
  evaluation, the same-domain learning sets and the training-only proxy task of the baselines' whitening;
- ``run``: the state the phases share (results, report, time budget, threaded transforms);
- ``experiments``: one module per experiment family -- ``features`` (pool5 maps, masks), ``framework``
  (mask x dimension, alpha, ITQ, Table 9, dimension sweep), ``hypercolumns``, ``baselines`` and
  ``learning`` (same-domain and on-the-database learning), ``beyond`` (re-ranking, robust learned steps,
  multi-scale: issue 12) and ``paper_tables`` (Tables 3 and 7);
- ``report``: the markdown file (``markdown``), its sections (``tables``, ``learning``, ``beyond``,
  ``beyond_findings``, ``discussion``) and
  figures (``plots``);
- ``merge``: the report of several partial runs' JSON, with no computation;
- ``plumbing``: phase timer, machine facts, caches of ragged local-feature sets;
- ``main``: extraction, masks, then every phase in order of importance within the time budget.
"""
