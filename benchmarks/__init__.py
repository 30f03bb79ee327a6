"""Benchmarks of sb3_ppo_kl against SB3 PPO, sb3-contrib and the paper; not part of the installed package."""
