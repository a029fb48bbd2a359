"""Evaluation of shipped or trained models on raw datasets or preprocess Parquet."""
