"""Preprocessing: images -> detected, cropped, labelled faces in Parquet (see :mod:`.pipeline`)."""
