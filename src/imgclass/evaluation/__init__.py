"""Evaluation: metrics (scikit-learn), figures (matplotlib), and a written report."""
