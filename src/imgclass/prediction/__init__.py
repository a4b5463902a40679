"""Prediction from a model file: top-k for images, and Kaggle submissions."""
