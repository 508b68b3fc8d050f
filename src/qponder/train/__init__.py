"""Stage 1 (SFT, "Q-Ponder-CI") and stage 2 (GRPO, "Q-Ponder") on TRL's trainers."""
