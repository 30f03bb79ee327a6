"""
The fine-tuning benchmark (issue 13): fine-tune a behaviour clone of an expert without forgetting it.

SB3 PPO and PPOKL started from a behaviour clone of an expert, with and without the KL penalty to the clone as a
reference, frozen or moving.

From the repository root, after the README's install command::

    python -m benchmarks.finetune --tasks LunarLander-v3 LunarLanderContinuous-v3 --seeds 0 1 2 --workers 2
    python -m benchmarks.finetune --summary                   # markdown tables and results/finetune_<task>.png

    # the 5-seed protocol (issue 31): 5 seeds, 20 episodes per evaluation, results/finetune_5seed/
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
   - ``ppokl-ref``: the same with the clone as the frozen reference (``ref_tau=0``, given explicitly: the default
     of ``from_pretrained`` moves it) and ``--ref-kl-coef`` (default 1.0), fixed;
   - ``ppokl-ref-soft-0.3``, ``ppokl-ref-soft-0.6``: ``ppokl-ref`` whose reference moves toward the policy after
     every update, ``ref_tau=0.3`` and ``0.6``. The rates' reasons: docs/guide/finetune.md.

   Methods whose options were removed (issue 45: ``protocol.REMOVED_METHODS``, run by commit e562871) keep their
   rows, reported as removed: ``ppokl-ref-warmup`` (a value warm-up), ``ppokl-ref-target`` and
   ``ppokl-ref-target-0.01`` (an adapted coefficient), ``ppokl-ref-floor`` (its floor), ``ppokl-ref-anneal`` (a
   hold-then-linear schedule) and ``ppokl-ref-hard-4`` (a hard reset every 4 updates).

``--protocol 5seed`` (a preset of ``protocol.PROTOCOLS``) runs seeds 0-4 with 20 evaluation
episodes, of ``ppo``, ``ppokl-ref`` and the two moving references (on Walker2d-v5 and HalfCheetah-v5: ``ppo``,
``ppokl-ref`` and ``ppokl-ref-soft-0.3``), in
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
