"""Report on a sweep: per-task curves, rliable aggregates over tasks and the paper's Welch t-tests of the final
score and the area under the curve, what the weighter learned, and the world model's diagnostics.

Usage::

    python -m recipes.report SWEEP_DIR [--baseline dreamerv2] [--out DIR] [--reps 2000] [--seed 0] [--last 1]

Input layout
------------
A sweep writes ``SWEEP_DIR/<task>/<method>/<seed>[/<grid point>]/``; every leaf is a ``python -m recipes.tempo``
run directory (``config.json`` + ``metrics.jsonl``, read once by :mod:`recipes.report.runs`). Leaves are found
by looking for ``config.json`` files (``replay/``, ``tb/``, hidden folders such as Ray Tune's ``.tune/`` and the
output folder are not searched), so the depth does not have to be exact.

* **task** is the config's ``task``, canonicalised so ``dmc:walker_stand`` and ``walker_stand`` are one task.
* **method label** is the leaf's path between ``<task>`` and the run, less the seed folder: ``tempo`` for
  ``walker_stand/tempo/0``, and ``tempo/tempo.bilevel.meta_lr=0.0001`` for ``recipes.sweep``'s grid-point leaf
  ``walker_stand/tempo/0/tempo.bilevel.meta_lr=0.0001`` (or ``walker_stand/tempo/<point>/0``). A grid point
  is a different method, so it keeps its own curve and its own row; the seed folder is the component that
  spells the config's seed (``3``, ``s3``, ``seed_3``), the last one when none does.
* A ``config.json`` without ``task``/``method`` keys (e.g. a sweep's own spec) is not a run and is ignored.

Rules (chosen so a sweep that is still running is compared fairly)
-----------------------------------------------------------------
* A leaf with no evaluation yet (or unreadable) is listed and excluded; a run whose last evaluation is below its
  config's ``run.steps`` is *unfinished* and listed, but used.
* **Frame budget per task**: the largest frame count that *every* scored run of the task (all methods) has
  reached, i.e. the minimum over those runs of their last evaluation step. A run's **final score** is the mean of
  its last ``K`` (``--last``) evaluation returns at or below that budget. One slow run lowers its task's budget
  for everyone, rather than comparing a method at 1M frames with another at 300k. An evaluation up to 1% of
  ``run.eval_every`` after a due frame without its own evaluation counts at that frame (a run resumed by code before
  2e4e862 evaluated an agent step late, e.g. at 3 001 frames for 3 000). ``--frames N`` scores every task at N
  frames instead (a campaign's endpoint while later seeds are on their way): the runs short of N are listed
  (``short_of_frames``), not scored, and still drawn in the curves and the training-log figures.
* **Area under the curve** (``auc``), the second score: the mean of a run's evaluation returns at frames in
  ``(0, budget]``, every evaluation up to the task's frame budget with equal weight. The TEMPO paper's claim is
  sample efficiency, which a final score alone misses (two methods can end equal after one got there first). The
  step-0 evaluation is excluded: it scores the untrained policy, the same for every method up to initialisation
  noise, and would only dilute the difference. A run with no evaluation in ``(0, budget]`` (a budget of 0, or a
  coarser evaluation grid than the run that set the budget) has no AUC: it is left out of the AUC rows and, with
  its method, out of the AUC aggregates, and listed. The AUC is aggregated, tested and tabulated exactly like
  the final score (normalised the same way: the normalisation is affine, so the normalised AUC is the mean
  normalised return).
* **Normalisation**: DMC ``return / 1000`` (the maximum episode return); Atari human-normalised
  ``(return - random) / (human - random)`` with :data:`~.tasks.ATARI_RANDOM_HUMAN`. Other suites (``gym:``) and unknown
  games are reported per task but left out of the aggregates.
* **Aggregates** (rliable, stratified bootstrap, percentile 95% CIs, ``--reps`` replications): IQM, mean and
  median of the normalised final scores and, with the same runs, of the normalised AUCs (``aggregate.auc``);
  probability of improvement of each method over ``--baseline`` (of both scores);
  performance profiles; and a sample-efficiency curve (IQM against frames). Comparing aggregates over different
  task sets would be meaningless, so a method enters them only if it has scored runs on *every* normalisable
  task (others, e.g. a grid point run on one task, are listed as excluded). rliable needs a
  ``(runs, tasks)`` matrix, so each method uses the same number of runs on every task: the smallest count over
  tasks, lowest seeds first (dropped runs are listed). The bootstrap resamples runs within each task
  independently, so rows need not correspond to one seed. With one run per task every CI is NaN (``null`` in
  ``report.json``, n/a in ``report.md``): a bootstrap of one run has zero width, which would read as certainty.
* **Sample-efficiency curve**: on the evaluation steps present for every aggregated task; at each frame, the
  runs that have that evaluation (same runs-per-task rule), so unfinished runs drop out of the later points.
* **Paper protocol** beside it: per task, Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of the
  final scores (``welch``) and of the AUCs (``welch_auc``), method vs baseline: t, two-sided p and one-sided p
  (method > baseline, as in the TEMPO paper), n per side, and the difference of means a two-sided t-test at 5%
  would detect with 80% power at the runs' pooled std (``detectable``: what a null result can rule out). The
  variant of ``python -m recipes.plot`` (one-tailed, averaged over all common evaluation steps,
  ``welch_over_evals``) is in ``report.json`` too; both come from :func:`recipes.report.stats.welch`.
* Per-task curves: mean and 95% CI (Student t, over seeds) of the return at each evaluation step, from the runs
  that have that evaluation; the task's frame budget is a dashed vertical line. Published returns of DreamerV3
  and the official DreamerV2 (:data:`~.tasks.ANCHORS`) are drawn for scale on the tasks that have them, as markers with
  ±1 std (over their seeds) error bars at their frame counts.
* **What the weighter learned** (``weights.png`` and a table): the training log's ``wm/weight_*`` statistics
  (:data:`~.runs.WEIGHT_METRICS`; each log record holds the mean over the updates since the previous one) against
  frames, mean and 95% Student-t band over seeds, one row per task, one colour per method. Only *weighted* runs
  enter: runs that log a weight statistic other than ``wm/weight_std``, or a non-zero ``wm/weight_std``
  (DreamerV2 logs ``wm/weight_std = 0`` and none of the others; older runs log none of them). The table gives, per task
  and method, each statistic's **tail mean**: per scored run, the mean of its records at frames in ``[0.8 B, B]``,
  ``B`` the task's frame budget (the last 20% of the frames its scores are at; the same window for every run of a
  task, so a seed still at 3e4 frames is not averaged with one at 1e5: a run short of ``--frames`` is only in the
  figure), then mean ± std over the runs, with their number. A run with no record in the window is left out.
* **World-model diagnostics** (``diagnostics.png`` and a table, every method): the unweighted ``wm/kl``,
  decoder loss (``wm/state_loss``, or ``wm/image_loss`` for pixel runs), ``wm/reward_loss``, ``wm/post_ent``,
  ``agent/imag_return``, ``agent/actor_ent`` (:data:`~.runs.DIAGNOSTIC_METRICS`) against frames; the same tail means.
* **Grid contrasts** (``contrasts``, a section of ``report.md`` when the sweep has ``--grid`` points; module
  :mod:`~recipes.report.contrasts`): a grid label ``<method>/<field>=<value>`` splits into method and point; each
  method's **gain** over ``--baseline`` at the same point (difference of mean final scores and of mean AUCs, Welch
  t and p), and for every pair of points the **interaction** (gain at a minus gain at b), both with percentile
  bootstrap 95% CIs that resample each group's seeds independently (``--reps``, ``--seed``). The flag-weight
  statistics (:data:`~.runs.FLAG_WEIGHT_METRICS`, e.g. ``wm/weight_distractor_on``: the mean weight on steps where
  the distractors are on, over the batch mean) get their tail mean per group with a 95% t-interval and a
  one-sample t-test against 1 (no preference).
* std is the sample std (``ddof=1``) everywhere, ``python -m recipes.plot`` included.
* Every run's evaluations (``runs[i].evaluations``: ``[frames, mean return]`` pairs, past the frame budget too) are
  listed in one table, so a campaign's notes can quote them rather than copy them by hand.

Outputs (``--out``, default ``SWEEP_DIR/report``): ``report.md``, ``report.json`` (every number),
``curves.png``, ``aggregates.png``, ``aggregates_auc.png``, ``performance_profile.png``,
``sample_efficiency.png`` (these four only when something can be aggregated), ``weights.png`` (only with a
weighted run), ``diagnostics.png`` (only when some run logs a diagnostic). Exit codes: 0 success, 2 bad input
(missing/empty ``SWEEP_DIR``, no run, no evaluation anywhere), reported as one ``error: ...`` line on stderr.

Package layout (each module one job)
------------------------------------
* :mod:`~recipes.report.tasks`: task names, normalisation tables (DMC, Atari random/human), published anchors.
* :mod:`~recipes.report.runs`: the one run loader (:class:`~recipes.report.runs.Run`, evaluations and every logged
  series), the sweep walk, method labels, grouping, and :class:`~recipes.report.runs.ReportError`, the one error
  type for bad input of both commands.
* :mod:`~recipes.report.stats`: scores at the frame budget, the one Welch test, curve bands, tail means.
* :mod:`~recipes.report.aggregates`: rliable (IQM, probability of improvement, profiles, sample efficiency).
* :mod:`~recipes.report.contrasts`: a grid sweep's gains per point and interactions between points.
* :mod:`~recipes.report.figures`: every figure (Agg backend); :mod:`~recipes.report.markdown`: ``report.md``.
* :mod:`~recipes.report.build`: assembles ``report.json``; :mod:`~recipes.report.cli`: this command;
  :mod:`~recipes.report.plot_cli`: ``python -m recipes.plot``.

rliable 1.2.0 needs ``arch`` < 8 (8 dropped the ``random_state`` argument rliable passes) and ``arch`` 7.2 needs
``pandas`` < 3.
"""

