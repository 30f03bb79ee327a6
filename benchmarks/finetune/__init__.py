"""
The fine-tuning benchmark (issue 13): fine-tune a behaviour clone of an expert without forgetting it.

SB3 PPO and PPOKL started from a behaviour clone of an expert, with and without the KL penalty to the clone as a
frozen reference, and with a value warm-up.

From the repository root, after the README's install command::

    python -m benchmarks.finetune --tasks LunarLander-v3 LunarLanderContinuous-v3 --seeds 0 1 2 --workers 2
    python -m benchmarks.finetune --summary                   # markdown tables and results/finetune_<task>.png

    # the 5-seed protocol (issue 31): 5 seeds, 20 episodes per evaluation, six methods, results/finetune_5seed/
    python -m benchmarks.finetune --protocol 5seed --workers 2
    python -m benchmarks.finetune --protocol 5seed --summary  # mean ± s.e., the goal's verdict, the figures

    # calibrate the clone first (expert, data and BC only; prints the expert's, the clone's and random returns):
    python -m benchmarks.finetune --tasks LunarLander-v3 --models-only --bc-transitions 5000 --bc-epochs 10

    # the clone's demonstrations as local Minari datasets (under MINARI_DATASETS_PATH; the minari extra):
    python -m benchmarks.finetune --write-minari

Every step is resumable: the expert and clone zips are reused (they are small: commit them with the results,
``git add benchmarks/results/finetune_experts/*.zip``, so that later runs start from the same models), and a
rerun skips the finished (task, method, seed) rows. Rows made with other settings (budget, clone, reference options)
for the same (task, method) are an error, not silently mixed.

The protocol, per task:

1. **Expert.** SB3 PPO with RL Zoo's hyperparameters, seed 0, for ``--expert-timesteps`` (default 1M). RL Zoo
   2.9.2's ``hyperparams/ppo.yml`` has one entry for ``LunarLander-v3`` and the same for
   ``LunarLanderContinuous-v3``: n_envs 16, n_timesteps 1e6, MlpPolicy, n_steps 1024, batch_size 64,
   gae_lambda 0.98, gamma 0.999, n_epochs 4, ent_coef 0.01 (everything else SB3's defaults: learning rate
   3e-4, clip range 0.2, separate 2x64 tanh networks for the policy and the value function, log-std
   initialised at 0). Saved as ``results/finetune_experts/<task>__expert_<steps>.zip``.
2. **Expert data.** ``--bc-transitions`` consecutive transitions of the expert on one environment (seed 1000),
   episode after episode (the last one cut where the budget ends). The expert acts *stochastically*: its actions are sampled from its
   action distribution as in its own training (for Box actions the unclipped Gaussian sample is recorded and
   the clipped one is sent to the environment), so the clone learns the expert's action noise too and starts
   fine-tuning with an exploring policy, as a pretrained policy would. ``--write-minari`` writes these steps as a Minari
   dataset, one episode per expert episode.
3. **Clone.** A fresh policy of the architecture every method fine-tunes (SB3's MlpPolicy with the task's
   hyperparameters, seed 0), trained by ``sb3_ppo_kl.behaviour_clone``: ``--bc-epochs`` passes over the data in
   shuffled minibatches of 64 (their order seeded with 0), Adam at 1e-3, maximising
   ``policy.evaluate_actions(obs, actions)``'s log-probability (the log-std too for Box actions). Only the action distribution learns: the value function keeps its random
   initialisation, as a pretrained policy without a value function would. BC is stopped early on purpose, by a
   small number of transitions and epochs, so that the clone is clearly worse than the expert and much better
   than a random policy; the expert's, the clone's and the random policy's returns are in
   ``results/finetune_models.csv``. Saved as ``results/finetune_experts/<task>__clone_<expert steps>_<n>x<epochs>.zip``.
4. **Fine-tuning,** for ``--timesteps`` (default 500k) per run, every method with the task's hyperparameters
   (the expert's), seeds 0 1 2 (the training envs' and the model's seed; the clone is the same for every seed):

   - ``ppo``: SB3 PPO (clip range 0.2) whose policy is the clone's (its state dict loaded into a fresh PPO
     with the same policy_kwargs);
   - ``ppokl``: PPOKL (adaptive KL penalty, kl_target 0.01) from the clone, without a reference
     (``PPOKL.from_pretrained(clone, env, ref_policy=None)``);
   - ``ppokl-ref``: the same with the clone as the frozen reference (``from_pretrained``'s default),
     ``--ref-kl-coef`` (default 1.0) and ``--ref-kl-target`` (default None: the coefficient stays fixed);
   - ``ppokl-ref-warmup``: ``ppokl-ref`` plus ``value_warmup_rollouts=--warmup-rollouts`` (default 2: 2 x 16,384
     steps on LunarLander of value-only updates, each 4 epochs x 256 minibatches; the evaluation at 49,152 steps, still
     in the first 10% of the budget, then follows the first policy update, so that the dip measures it);
   - ``ppokl-ref-target``: ``ppokl-ref`` whose coefficient adapts, starting at ``--ref-kl-coef``, toward
     ``ref_kl_target=0.02``: halved after an update whose mean KL to the clone is below 0.02 / 1.5, doubled
     above 0.02 * 1.5. With the fixed coefficient 1.0 the KL to the clone stays near 0.004; without a reference
     it grows past 0.08, and on LunarLander-v3 the returns of PPO and PPOKL without a reference collapsed (near
     80k steps) with the KL at 0.02 to 0.045;
   - ``ppokl-ref-target-0.01``: the same toward ``ref_kl_target=0.01`` (``ppokl-ref-target``'s LunarLander-v3
     falls came with the KL at 0.011 to 0.020);
   - ``ppokl-ref-floor``: ``ppokl-ref-target`` (toward 0.02) whose coefficient never falls below its start:
     ``ref_kl_coef_bounds=(--ref-kl-coef, 1e4)``. It rises when the KL to the clone is too high, and cannot halve
     to 0.125-0.25 during the first, small updates, as ``ppokl-ref-target``'s did before LunarLander's falls;
   - ``ppokl-ref-anneal``: ``ppokl-ref`` whose coefficient follows a schedule: ``--ref-kl-coef`` held for the first
     40% of the budget (200k of 500k steps), then linear to 0 at 80% (400k), and 0 for the last 20%
     (``HoldThenLinearSchedule(ref_kl_coef, 0.0, hold_fraction=0.4, end_fraction=0.8)``). The hold covers every
     measured fall with margin: 65k-82k steps for ``ppo`` and ``ppokl`` on LunarLander-v3, 65,536 for the adapted
     anchors, 131k for ``ppokl-ref-warmup``, the latest; the last 100k steps are free of the anchor, so that the
     policy can end where PPO ends instead of held back as ``ppokl-ref``'s fixed coefficient holds it;
   - ``ppokl-ref-soft-0.3``, ``ppokl-ref-soft-0.6``: ``ppokl-ref`` (the fixed coefficient) whose reference moves
     toward the policy after every update, ``ref_tau=0.3`` and ``0.6``; ``ppokl-ref-hard-4``: reset to the policy
     every 4 updates (``ref_tau=1.0, ref_update_interval=4``). The rates' reasons: docs/guide/finetune.md.

``--protocol 5seed`` (a preset of ``protocol.PROTOCOLS``) runs seeds 0-4 with 20 evaluation
episodes, of ``ppo``, ``ppokl-ref``, ``ppokl-ref-target`` and the three moving references, in
``results/finetune_5seed/`` (the committed expert and clone zips copied into it); its ``--summary`` (module
``compare``) gives per method and task the mean ± s.e. over seeds, the goal's verdict and two figures.

**Measures.** Every evaluation is the mean return of ``--eval-episodes`` (default 10) episodes of the
deterministic policy on one environment seeded 10,000 before each evaluation: every evaluation, of every
model, plays the same episodes. A run is evaluated at step 0 (the clone itself, before any update), then after
the first update at or past every ``--eval-every`` steps (default one rollout) and at its end. Per run:

- ``step0_return``: the return at step 0 (equal to the clone's evaluated return);
- ``dip``: the lowest return over the evaluations in the first 10% of the budget (step 0 included), and
  ``dip_step`` where it was;
- ``final_return``: the return of the last evaluation, after the whole budget; ``lowest``: the lowest return of
  the run;
- ``steps_to_expert``: the steps of the first evaluation at or above the expert's evaluated return (blank if never);
- ``final_kl_to_clone``: the mean KL[clone || policy] over the last rollout's states, for every method (for
  ``ppokl-ref`` it is what the penalty holds down), with beta and the reference coefficient at the end.

Every model runs on the CPU with one torch thread per process; ``--workers`` runs that many in parallel
(the experts, one per task, then the fine-tuning runs), and ``--ray ADDRESS`` runs them on a Ray cluster instead. Each finished run appends one row to
``results/finetune.csv`` and writes its curve (one row per evaluation) to
``results/finetune_curves/<task>__<method>__<seed>.csv``. ``--results-dir DIR`` puts every result file (models
included) under DIR instead (and ``--summary --results-dir DIR`` reads them there), e.g. for a quick try on
CartPole-v1, whose entry is small::

    python -m benchmarks.finetune --tasks CartPole-v1 --seeds 0 --expert-timesteps 4096 --timesteps 2048 \
        --eval-every 512 --eval-episodes 3 --bc-transitions 300 --bc-epochs 3 --results-dir /tmp/finetune

The package: ``protocol`` (the tasks, the methods, the protocols, the files and the measures), ``pretrain`` (the
expert, its data and the clone), ``run`` (the fine-tuning runs and the grid of them), ``report`` (the summary tables
and figures) and ``compare`` (the protocol's summary).
"""
