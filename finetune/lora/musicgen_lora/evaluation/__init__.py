"""Evaluation: compare models on prompts, score clips (metrics and flags), style distance, CLAP, report."""
